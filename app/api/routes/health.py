from fastapi import APIRouter

from app.api.deps import EngineDep, SettingsDep
from app.models import HealthPublic
from app.services.health import check_health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(engine: EngineDep, settings: SettingsDep) -> HealthPublic:
    """Whether the database and the broker answer, and how many workers sent a heartbeat lately."""
    return HealthPublic(**check_health(engine=engine, settings=settings))
