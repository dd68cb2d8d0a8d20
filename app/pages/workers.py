"""The worker fleet page (/workers): the same list as GET /api/workers, as a table."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.deps import SessionDep, SettingsDep
from app.pages.templating import render
from app.services.workers import list_workers

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    workers = list_workers(session=session, timeout_s=settings.HEARTBEAT_TIMEOUT_S)
    return render(request, "workers.html", {
        "workers": workers, "live": sum(not worker["lost"] for worker in workers),
        "timeout_s": settings.HEARTBEAT_TIMEOUT_S,
    }, active="workers")
