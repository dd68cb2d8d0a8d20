"""`python -m worker.healthcheck`: exit 0 when a worker on this host has a fresh heartbeat row.

The container healthcheck of docker-compose.yml's worker. It checks what
/api/health counts (the worker_heartbeat table), not `celery inspect ping`:
a `--pool=solo` worker cannot answer a ping while it trains, but its heartbeat
thread keeps writing.
"""

from __future__ import annotations

import socket
import sys

from sqlalchemy import func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from app.core.config import get_settings
from app.core.db import get_engine, utcnow
from app.models import WorkerHeartbeat


def latest_heartbeat_age_s(hostname: str) -> float | None:
    """Seconds since a worker named `…@hostname` last beat, or None when none ever did."""
    with Session(get_engine()) as session:
        last = session.exec(select(func.max(WorkerHeartbeat.last_seen))
                            .where(WorkerHeartbeat.hostname.like(f"%@{hostname}"))).one()
    if last is None:
        return None
    return (utcnow() - last).total_seconds()  # UTCDateTime reads back timezone-aware


def main() -> int:
    hostname = socket.gethostname()
    try:
        age = latest_heartbeat_age_s(hostname)
    except SQLAlchemyError as err:  # no database yet, no schema yet, or the server is down
        print(f"cannot read worker heartbeats: {err}", file=sys.stderr)
        return 1
    timeout = get_settings().HEARTBEAT_TIMEOUT_S
    if age is None or age > timeout:
        print(f"no worker heartbeat from {hostname} within {timeout:.0f} s (last: {age})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
