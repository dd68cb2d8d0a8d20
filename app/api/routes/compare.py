from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionDep
from app.core.security import parse_id_list
from app.models import ComparePublic
from app.services import runs
from app.services.errors import InvalidInput

router = APIRouter(tags=["compare"])


def _parse_ids(ids: str) -> list[int]:
    parsed = parse_id_list([ids])
    if parsed is None:
        raise InvalidInput([(("ids",), "must be comma-separated run ids, e.g. 1,2,3")])
    return parsed


@router.get("/compare", response_model=ComparePublic)
def compare(
    session: SessionDep,
    ids: Annotated[str, Query(description="Run ids, e.g. 1,2,3")],
    group_by: Annotated[str | None, Query(
        description='Group the runs by this setting: "model" or a hyperparameter that differs between them '
                    "(e.g. lr); each group gets the mean ± std of its final metrics")] = None,
) -> ComparePublic:
    """Runs side by side: hyperparameters (and which differ), final and best metrics; with group_by,
    the runs grouped by that setting (e.g. the seeds of each configuration) with mean ± std."""
    return ComparePublic(**runs.compare_runs(session=session, run_ids=_parse_ids(ids), group_by=group_by))
