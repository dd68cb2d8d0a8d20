from fastapi import APIRouter, status

from app.api.deps import SessionDep, SettingsDep, TokenDep
from app.models import StudyCreate, StudyPublic
from app.services import study

router = APIRouter(prefix="/study", tags=["study"])


@router.post("", response_model=StudyPublic, status_code=status.HTTP_201_CREATED, dependencies=[TokenDep])
def create_study(study_in: StudyCreate, session: SessionDep, settings: SettingsDep) -> StudyPublic:
    """Reproduce the study: queue its presets × N seeds (default 3) as one group on the dataset given.
    Each run keeps its preset's hyperparameters; the group's tag is returned as `group`."""
    group, created = study.create_study(session=session, study_in=study_in, settings=settings)
    return StudyPublic(group=group, data=created, count=len(created))
