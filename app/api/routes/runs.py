from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse

from app.api.deps import RunIdDep, client_address, EngineDep, SessionDep, SettingsDep, TokenDep
from app.models import (
    LayerRow,
    MetricsPublic,
    RunClone,
    RunCreate,
    RunEventPublic,
    RunPublic,
    RunsPublic,
    RunUpdate,
)
from app.services import catalog, runs
from app.core.security import MAX_OFFSET, parse_id
from app.services.live import StreamSlots, run_event_stream
from app.services.metrics import read_metrics

router = APIRouter(prefix="/runs", tags=["runs"])


def stream_slots(request: Request) -> StreamSlots:
    """The live-stream counter of the app serving `request` (made on first use from its settings)."""
    state = request.app.state
    if getattr(state, "stream_slots", None) is None:
        settings = state.settings
        state.stream_slots = StreamSlots(settings.SSE_MAX_STREAMS_PER_CLIENT, settings.SSE_MAX_STREAMS)
    return state.stream_slots


class SlotStreamingResponse(StreamingResponse):
    """A StreamingResponse that gives its stream slot back however it ends (also if never started)."""

    def __init__(self, content: Any, *, slot: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.release_slot = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release_slot()


def _split_csv(values: list[str] | None) -> list[str]:
    """Query lists given as ?x=a&x=b or ?x=a,b."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


@router.post("", response_model=RunPublic, status_code=status.HTTP_201_CREATED, dependencies=[TokenDep])
def create_run(run_in: RunCreate, session: SessionDep, settings: SettingsDep) -> RunPublic:
    """Queue a training run. Hyperparameters left out take the model's preset.
    503 (and no run) when the broker is down."""
    return runs.submit_runs(session=session, runs_in=[run_in], settings=settings)[0]


@router.get("", response_model=RunsPublic)
def list_runs(
    session: SessionDep,
    status_: Annotated[list[str] | None, Query(alias="status", description="e.g. running,queued")] = None,
    model: str | None = None,
    q: Annotated[str | None, Query(max_length=200, description="Substring of name or notes")] = None,
    tag: str | None = None,
    sort: Annotated[str, Query(description=f"One of: {', '.join(runs.SORT_COLUMNS)}")] = "created_at",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> RunsPublic:
    data, count = runs.list_runs(session=session, status=_split_csv(status_), model=model, q=q, tag=tag,
                                 sort=sort, order=order, limit=limit, offset=offset)
    return RunsPublic(data=data, count=count)


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run_id: RunIdDep, session: SessionDep) -> RunPublic:
    return runs.get_run(session=session, run_id=run_id)


@router.patch("/{run_id}", response_model=RunPublic, dependencies=[TokenDep])
def update_run(run_id: RunIdDep, run_update: RunUpdate, session: SessionDep) -> RunPublic:
    """Edit the name, tags or notes."""
    return runs.update_run(session=session, run_id=run_id, run_update=run_update)


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               dependencies=[TokenDep])
def delete_run(run_id: RunIdDep, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete a run that is not running, with its metrics, history and artifacts (409 if running)."""
    runs.delete_run(session=session, run_id=run_id, settings=settings)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{run_id}/cancel", response_model=RunPublic, status_code=status.HTTP_202_ACCEPTED,
             dependencies=[TokenDep])
def cancel_run(run_id: RunIdDep, session: SessionDep) -> RunPublic:
    """Queued: cancelled at once. Running: the worker stops after its current step. 409 if finished."""
    return runs.request_cancel(session=session, run_id=run_id)


@router.post("/{run_id}/clone", response_model=RunPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[TokenDep])
def clone_run(run_id: RunIdDep, session: SessionDep, settings: SettingsDep, overrides: RunClone | None = None) -> RunPublic:
    """Queue a copy of the run, with the body's fields merged over the original's."""
    return runs.clone_run(session=session, run_id=run_id, overrides=overrides or RunClone(), settings=settings)


@router.get("/{run_id}/metrics", response_model=MetricsPublic)
def run_metrics(
    run_id: RunIdDep,
    session: SessionDep,
    settings: SettingsDep,
    names: Annotated[list[str] | None, Query(description="e.g. val/loss,val/acc")] = None,
    split: Annotated[str | None, Query(max_length=32, description="e.g. train, val, test")] = None,
    max_points: Annotated[int | None, Query(ge=10, le=100_000, description="Per series")] = None,
) -> MetricsPublic:
    """The run's metric series, each downsampled (min-max, extremes kept) to at most max_points."""
    series = read_metrics(session=session, run_id=run_id, names=_split_csv(names) or None, split=split,
                          max_points=max_points or settings.METRICS_MAX_POINTS)
    return MetricsPublic(run_id=run_id, series=series)


@router.get("/{run_id}/history", response_model=list[RunEventPublic])
def run_history(run_id: RunIdDep, session: SessionDep) -> list[RunEventPublic]:
    """The run's history: queued, started on host X, cancel requested, worker lost, …"""
    return runs.list_events(session=session, run_id=run_id)


@router.get("/{run_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}})
def run_events(
    run_id: RunIdDep,
    request: Request,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="Send metric points with id > after")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Live updates (SSE): events status, progress, metrics, event and end; closes when the run finishes,
    when the client leaves, or after SSE_MAX_STREAM_S (the browser reconnects). 429 past
    SSE_MAX_STREAMS_PER_CLIENT streams from one address or SSE_MAX_STREAMS in all."""
    runs.get_run(session=session, run_id=run_id)  # 404 before the stream starts
    session.close()
    resume_after = after if after is not None else min(parse_id(last_event_id) or 0, 2**63 - 1)
    slot = stream_slots(request).acquire(client_address(request))  # 429 when over a limit
    stream = run_event_stream(
        engine=engine, run_id=run_id, after_point_id=resume_after,
        poll_interval_s=settings.SSE_POLL_INTERVAL_S, keepalive_s=settings.SSE_KEEPALIVE_S,
        is_disconnected=request.is_disconnected, max_duration_s=settings.SSE_MAX_STREAM_S,
    )
    # X-Accel-Buffering: let nginx pass the events through as they come.
    return SlotStreamingResponse(stream, slot=slot, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{run_id}/checkpoint", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def run_checkpoint(run_id: RunIdDep, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """Download the run's last checkpoint (404 when there is none)."""
    path = runs.checkpoint_file(session=session, run_id=run_id, settings=settings)
    return FileResponse(path, media_type="application/octet-stream", filename=f"run-{run_id}-{path.name}")


@router.get("/{run_id}/layers", response_model=list[LayerRow])
def run_layers(run_id: RunIdDep, session: SessionDep) -> list[LayerRow]:
    """The layer table of the run's model, built with the run's model options."""
    run = runs.get_run(session=session, run_id=run_id)
    options = run.hyperparameters.get("model_options") or {}
    return [LayerRow(**row) for row in catalog.model_layers(run.model, options)]
