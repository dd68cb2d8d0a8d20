from fastapi import APIRouter, status

from app.api.deps import SessionDep, SettingsDep, TokenDep
from app.models import RunsPublic, SweepCreate
from app.services import runs

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@router.post("", response_model=RunsPublic, status_code=status.HTTP_201_CREATED, dependencies=[TokenDep])
def create_sweep(sweep_in: SweepCreate, session: SessionDep, settings: SettingsDep) -> RunsPublic:
    """Queue one run per combination of the grid's values, from a base request or an existing run."""
    created = runs.create_sweep(session=session, sweep_in=sweep_in, settings=settings)
    return RunsPublic(data=created, count=len(created))
