"""GET /api/health: database, broker and live workers."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from app.core.config import Settings
from app.services.dispatch import broker_status
from app.services.lifecycle import count_live_workers

logger = logging.getLogger(__name__)


def check_health(*, engine: Engine, settings: Settings) -> dict[str, Any]:
    database, workers = "ok", 0
    try:
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
            workers = count_live_workers(session=session, timeout_s=settings.HEARTBEAT_TIMEOUT_S)
    except (SQLAlchemyError, OSError) as err:
        logger.warning("health: database down: %s", err)
        database = "down"
    return {
        "status": "ok" if database == "ok" else "degraded",
        "database": database,
        "broker": broker_status(settings),
        "workers": workers,
    }
