from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionDep
from app.core.security import parse_id
from app.models import ComparePublic
from app.services import runs
from app.services.errors import InvalidInput

router = APIRouter(tags=["compare"])


def _parse_ids(ids: str) -> list[int]:
    parsed = [parse_id(part) for part in ids.split(",") if part.strip()]
    if any(run_id is None for run_id in parsed):
        raise InvalidInput([(("ids",), "must be comma-separated run ids, e.g. 1,2,3")])
    return [run_id for run_id in parsed if run_id is not None]


@router.get("/compare", response_model=ComparePublic)
def compare(session: SessionDep, ids: Annotated[str, Query(description="Run ids, e.g. 1,2,3")]) -> ComparePublic:
    """Runs side by side: hyperparameters (and which differ), final and best metrics."""
    return ComparePublic(**runs.compare_runs(session=session, run_ids=_parse_ids(ids)))
