"""/runs/{id}/visualize: what a run's checkpoint has learnt (the study's figures 3.4–3.7).

The page itself only reads the run row and checks that a checkpoint exists, so
it renders at once; static/visualize.js then asks /api/runs/{id}/visualize/*
for the pictures and figures, which load the model and the test set.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from app.api.deps import SessionDep, SettingsDep
from app.core.config import Settings
from app.models import Run
from app.pages.common import get_run_or_404
from app.pages.templating import render
from app.services import viz_cache
from app.services.errors import ServiceError

router = APIRouter(tags=["pages"], include_in_schema=False)


def checkpoint_problem(session: Session, run: Run, settings: Settings) -> str | None:
    """Why there is nothing to show (no checkpoint yet, file missing), or None when there is."""
    try:
        viz_cache.checkpoint_of(session=session, run_id=run.id, settings=settings)
    except ServiceError as err:
        message = str(err)
        return message[:1].upper() + message[1:]
    return None


@router.get("/runs/{run_id:int}/visualize", response_class=HTMLResponse)  # /runs/abc/visualize: the HTML 404
def visualize_page(run_id: int, request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    run = get_run_or_404(session, run_id)
    problem = checkpoint_problem(session, run, settings)
    context = {"run": run, "problem": problem, "no_checkpoint_yet": not run.checkpoint_path}
    return render(request, "visualize.html", context, active="runs")
