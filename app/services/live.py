"""The live stream of one run for GET /api/runs/{id}/events (Server-Sent Events).

Each poll opens a fresh short session, reads what changed and closes it, so no
transaction (and on SQLite no snapshot that blocks WAL checkpoints) stays open
across the sleeps. Events:

- status:   {"status", "cancel_requested", "started_at", "finished_at", "error", ...} when it changes
- progress: {"epoch", "step", "total_steps", "images_per_s", "heartbeat_at"} when it changes
- metrics:  {"series": [{"name", "step", "epoch", "time", "value"}], "last_id"}, with SSE id = last_id,
            so a reconnecting EventSource resumes after it (Last-Event-ID); ?after=N does the same
- event:    one history row {"id", "time", "kind", "message"}
- end:      {"status"} once the run is finished (or {"status": null} if it was deleted); then the stream closes
A comment line (": keep-alive") goes out when nothing else did for a while.

Streams are limited (StreamSlots, SSE_MAX_STREAMS_PER_CLIENT and SSE_MAX_STREAMS) and each ends
after SSE_MAX_STREAM_S, so a stream on a run that stays queued does not live for ever. Between
polls a stream holds neither a thread nor a database connection.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import Engine, select
from sqlmodel import Session

from app.models import TERMINAL_STATUSES, Run, RunEvent
from app.services.errors import TooManyRequests
from app.services.metrics import read_new_points

STATUS_FIELDS = ("status", "cancel_requested", "started_at", "finished_at", "error", "worker_host",
                 "resumed_count", "best_metrics", "final_metrics")
PROGRESS_FIELDS = ("epoch", "step", "total_steps", "images_per_s", "heartbeat_at")
POINTS_PER_POLL = 5000


def sse_message(event: str | None, data: Any, event_id: int | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, default=str, allow_nan=False, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


@dataclass
class _Poll:
    run_missing: bool
    status: dict[str, Any]
    progress: dict[str, Any]
    events: list[dict[str, Any]]
    fragments: list[dict[str, Any]]
    last_point_id: int
    more_points: bool


def _poll(engine: Engine, run_id: int, after_point_id: int, after_event_id: int) -> _Poll:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return _Poll(True, {}, {}, [], [], after_point_id, False)
        # The status is read before the points: once it says finished, every point is already there.
        status = {key: _jsonable(getattr(run, key)) for key in STATUS_FIELDS}
        progress = {key: _jsonable(getattr(run, key)) for key in PROGRESS_FIELDS}
        events = [
            {"id": e.id, "time": e.time.isoformat(), "kind": e.kind, "message": e.message}
            for e in session.scalars(select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.id > after_event_id)
                                     .order_by(RunEvent.id)).all()
        ]
        fragments, last_id = read_new_points(session=session, run_id=run_id, after_id=after_point_id,
                                             limit=POINTS_PER_POLL)
        more = sum(len(f["step"]) for f in fragments) >= POINTS_PER_POLL
        return _Poll(False, status, progress, events, fragments, last_id, more)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def run_event_stream(*, engine: Engine, run_id: int, after_point_id: int = 0,
                           poll_interval_s: float = 0.75, keepalive_s: float = 15.0,
                           is_disconnected: Callable[[], Any] | None = None,
                           max_duration_s: float | None = None) -> AsyncIterator[str]:
    """Yield SSE messages for run `run_id` until it finishes, the client leaves or max_duration_s passes."""
    last_status: dict[str, Any] | None = None
    last_progress: dict[str, Any] | None = None
    last_event_id = 0
    last_sent = started = time.monotonic()
    yield "retry: 3000\n\n"
    while True:
        if max_duration_s is not None and time.monotonic() - started > max_duration_s:
            return  # the browser's EventSource reconnects, and takes a slot again
        poll = await anyio.to_thread.run_sync(_poll, engine, run_id, after_point_id, last_event_id)
        if poll.run_missing:
            yield sse_message("end", {"status": None, "reason": "run not found"})
            return
        messages = []
        if poll.status != last_status:
            messages.append(sse_message("status", poll.status))
            last_status = poll.status
        if poll.progress != last_progress:
            messages.append(sse_message("progress", poll.progress))
            last_progress = poll.progress
        for event in poll.events:
            messages.append(sse_message("event", event))
            last_event_id = event["id"]
        if poll.fragments:
            after_point_id = poll.last_point_id
            messages.append(sse_message("metrics", {"series": poll.fragments, "last_id": after_point_id},
                                        event_id=after_point_id))
        for message in messages:
            yield message
        if messages:
            last_sent = time.monotonic()
        if poll.status["status"] in TERMINAL_STATUSES and not poll.more_points:
            yield sse_message("end", {"status": poll.status["status"]})
            return
        if time.monotonic() - last_sent >= keepalive_s:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if is_disconnected is not None and await is_disconnected():
            return
        if not poll.more_points:
            await anyio.sleep(poll_interval_s)


class StreamSlots:
    """Counts open live streams per client address and in all; acquire() raises TooManyRequests (429) past a limit."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> Callable[[], None]:
        """Take a slot for `client`; returns the function that gives it back (call it once)."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise TooManyRequests(f"the server already serves {self.total} live streams (SSE_MAX_STREAMS)")
            if self._open[client] >= self.per_client:
                raise TooManyRequests(f"this address already has {self.per_client} live streams open "
                                "(SSE_MAX_STREAMS_PER_CLIENT); close a tab")
            self._open[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._open[client] -= 1
                    if self._open[client] <= 0:
                        del self._open[client]
        return release

    def count(self, client: str | None = None) -> int:
        with self._lock:
            return self._open[client] if client is not None else sum(self._open.values())

