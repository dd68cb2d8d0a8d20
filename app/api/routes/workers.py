from fastapi import APIRouter

from app.api.deps import SessionDep, SettingsDep
from app.models import WorkerPublic, WorkersPublic
from app.services.workers import list_workers

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=WorkersPublic)
def read_workers(session: SessionDep, settings: SettingsDep) -> WorkersPublic:
    """The worker fleet: host, pid, device and precision, current run, finished runs, last heartbeat;
    `lost` when the heartbeat is older than HEARTBEAT_TIMEOUT_S."""
    workers = [WorkerPublic(**worker) for worker in
               list_workers(session=session, timeout_s=settings.HEARTBEAT_TIMEOUT_S)]
    return WorkersPublic(data=workers, count=len(workers), live=sum(not worker.lost for worker in workers))
