"""`Client(url, token=None)`: the REST API of a Trainboard server as typed Python methods.

Built on httpx and nothing else from the project, so a script can use it from any
machine without torch. Every non-2xx answer raises `ApiError`, whose
`field_errors` carry the API's field-level messages (422) as `FieldError(loc, msg)`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ml.files import atomic_write  # standard library only: the client stays torch-free

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_TIMEOUT_S = 30.0
# The server sends a keep-alive comment every 15 s: a stream silent for longer is dead, so reconnect.
STREAM_READ_TIMEOUT_S = 60.0
MAX_METRIC_POINTS = 100_000  # the API's per-series ceiling: a full export for any run trained here


# ------------------------------------------------------------------ errors ---

class TrainboardError(Exception):
    """Base class of the client's errors."""


class ConnectionFailed(TrainboardError):
    """The server could not be reached (refused, timed out, DNS)."""


@dataclass(frozen=True)
class FieldError:
    """One field-level message of a 422, e.g. loc=("body", "hyperparameters", "lr")."""

    loc: tuple[str | int, ...]
    msg: str

    @property
    def field(self) -> str:
        """The location without FastAPI's "body"/"query" prefix: "hyperparameters.lr"."""
        parts = self.loc[1:] if self.loc and self.loc[0] in ("body", "query", "path") else self.loc
        return ".".join(map(str, parts))

    def __str__(self) -> str:
        return f"{self.field}: {self.msg}" if self.field else self.msg


class ApiError(TrainboardError):
    """The API answered with an error status; `detail` is its message, `field_errors` its 422 details."""

    def __init__(self, status_code: int, detail: str, field_errors: Sequence[FieldError] = (),
                 method: str = "", url: str = "") -> None:
        self.status_code = status_code
        self.detail = detail
        self.field_errors = list(field_errors)
        self.method, self.url = method, url
        super().__init__(f"{status_code} from {method} {url}: {detail}".replace("  ", " "))

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        field_errors: list[FieldError] = []
        if isinstance(detail, list):  # FastAPI's validation errors
            field_errors = [FieldError(tuple(item.get("loc") or ()), str(item.get("msg", "")))
                            for item in detail if isinstance(item, dict)]
            message = "; ".join(map(str, field_errors)) or "invalid request"
        elif detail is not None:
            message = str(detail)
        else:
            message = response.text[:500] or response.reason_phrase
        request = response.request
        return cls(response.status_code, message, field_errors, request.method, str(request.url))


# ----------------------------------------------------------------- results ---

@dataclass(frozen=True)
class Run:
    """One run as the API describes it (RunPublic); `raw` keeps every field, also ones added later."""

    id: int
    name: str
    model: str
    status: str
    dataset: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    worker_host: str | None = None
    epoch: float = 0.0
    step: int = 0
    total_steps: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    final_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    tags: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        known = {f.name for f in fields(cls)} - {"raw"}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("created_at", "started_at", "finished_at"):
            if isinstance(values.get(key), str):
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values, raw=dict(data))


@dataclass(frozen=True)
class RunList:
    runs: list[Run]
    count: int  # matching runs in all, beyond this page


@dataclass(frozen=True)
class Series:
    """One metric as plain lists, point i being (step[i], epoch[i], time[i], value[i])."""

    name: str
    step: list[int]
    epoch: list[float]
    time: list[float]
    value: list[float | None]
    downsampled: bool = False


@dataclass(frozen=True)
class Metrics:
    run_id: int
    series: dict[str, Series]  # by name, e.g. "val/acc"

    def __getitem__(self, name: str) -> Series:
        return self.series[name]

    def rows(self) -> Iterator[tuple[str, int, float, float, float | None]]:
        """(name, step, epoch, time, value) for every point: the long format of exports."""
        for series in self.series.values():
            yield from zip([series.name] * len(series.step), series.step, series.epoch, series.time, series.value)

    def to_pandas(self) -> Any:
        """A long DataFrame (name, step, epoch, time, value); needs pandas, which the client does not."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Metrics.to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame(list(self.rows()), columns=["name", "step", "epoch", "time", "value"])


@dataclass(frozen=True)
class StreamEvent:
    """One Server-Sent Event of GET /api/runs/{id}/events: status, progress, metrics, event or end."""

    event: str
    data: Any
    id: str | None = None


# ------------------------------------------------------------------ client ---

class Client:
    """The Trainboard REST API at `url` (e.g. http://127.0.0.1:8000); `token`: TRAINBOARD_API_TOKEN.

    Use as a context manager, or call close(), to release the connection pool.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + "/api", headers=headers, timeout=timeout_s,
                                  transport=transport)

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> Client:
        """TRAINBOARD_URL (default http://127.0.0.1:8000) and TRAINBOARD_API_TOKEN, unless given."""
        return cls(url or os.environ.get("TRAINBOARD_URL") or "http://127.0.0.1:8000",
                   token or os.environ.get("TRAINBOARD_API_TOKEN") or None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise ConnectionFailed(f"cannot reach Trainboard at {self.url}: {err}") from err
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    # ------------------------------------------------------------ catalog ---

    def models(self) -> list[dict[str, Any]]:
        """The registered models: name, title, parameters, and each hyperparameter's preset value."""
        return self._request("GET", "/models").json()

    def workers(self) -> list[dict[str, Any]]:
        """The worker fleet: host, pid, device, current run, finished runs, last heartbeat, lost."""
        return self._request("GET", "/workers").json()["data"]

    # ------------------------------------------------------------ launching ---

    def launch(self, model: str, *, dataset: Mapping[str, Any] | None = None,
               hyperparameters: Mapping[str, Any] | None = None, name: str | None = None,
               tags: Sequence[str] = (), notes: str = "") -> Run:
        """Queue one run; hyperparameters left out take the model's preset."""
        body: dict[str, Any] = {"model": model, "hyperparameters": dict(hyperparameters or {}),
                                "tags": list(tags), "notes": notes}
        if dataset is not None:
            body["dataset"] = dict(dataset)
        if name is not None:
            body["name"] = name
        return Run.from_json(self._request("POST", "/runs", json=body).json())

    def sweep(self, grid: Mapping[str, Sequence[Any]], *, model: str | None = None,
              dataset: Mapping[str, Any] | None = None, hyperparameters: Mapping[str, Any] | None = None,
              base_run_id: int | None = None, name: str | None = None) -> list[Run]:
        """One run per combination of `grid` (e.g. {"lr": [0.1, 0.05]}), over `model`'s settings or
        over an existing run's (`base_run_id`)."""
        body: dict[str, Any] = {"grid": {key: list(values) for key, values in grid.items()}}
        if base_run_id is not None:
            body["base_run_id"] = base_run_id
        if model is not None:
            base: dict[str, Any] = {"model": model, "hyperparameters": dict(hyperparameters or {})}
            if dataset is not None:
                base["dataset"] = dict(dataset)
            if name is not None:
                base["name"] = name
            body["base"] = base
        return [Run.from_json(run) for run in self._request("POST", "/sweeps", json=body).json()["data"]]

    def clone(self, run_id: int, **overrides: Any) -> Run:
        """Queue a copy of the run; keyword arguments (name, model, dataset, hyperparameters, tags,
        notes) are merged over the original's."""
        return Run.from_json(self._request("POST", f"/runs/{run_id}/clone", json=overrides).json())

    # ------------------------------------------------------------- reading ---

    def list_runs(self, *, status: str | Sequence[str] | None = None, model: str | None = None,
                  q: str | None = None, tag: str | None = None, sort: str = "created_at",
                  order: str = "desc", limit: int = 50, offset: int = 0) -> RunList:
        """Runs, newest first by default; `status` e.g. "running" or ["queued", "running"]."""
        params: dict[str, Any] = {"sort": sort, "order": order, "limit": limit, "offset": offset}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        params.update({key: value for key, value in (("model", model), ("q", q), ("tag", tag)) if value})
        body = self._request("GET", "/runs", params=params).json()
        return RunList([Run.from_json(run) for run in body["data"]], body["count"])

    def get_run(self, run_id: int) -> Run:
        return Run.from_json(self._request("GET", f"/runs/{run_id}").json())

    def history(self, run_id: int) -> list[dict[str, Any]]:
        """The run's events: queued, started on host X, checkpoint, worker lost, succeeded…"""
        return self._request("GET", f"/runs/{run_id}/history").json()

    def metrics(self, run_id: int, *, names: Sequence[str] | None = None, split: str | None = None,
                max_points: int = MAX_METRIC_POINTS) -> Metrics:
        """The run's metric series as plain lists (min-max downsampled beyond `max_points` per series)."""
        params: dict[str, Any] = {"max_points": max_points}
        if names:
            params["names"] = ",".join(names)
        if split:
            params["split"] = split
        body = self._request("GET", f"/runs/{run_id}/metrics", params=params).json()
        series = {item["name"]: Series(item["name"], item["step"], item["epoch"], item["time"], item["value"],
                                       item.get("downsampled", False)) for item in body["series"]}
        return Metrics(run_id, series)

    def compare(self, run_ids: Sequence[int], group_by: str | None = None) -> dict[str, Any]:
        """Runs side by side: {"runs": [...], "differing": [hyperparameters that differ], "metric_names",
        "group_by", "groups"}.

        With `group_by` ("model" or a setting in "differing", e.g. "lr"), "groups" has one entry per
        value: {"value", "run_ids", "n", "summaries": {metric: {"mean", "std", "n"}}}, std being None
        below two values; without it, "groups" is empty. Any other group_by is an ApiError 422.
        """
        params = {"ids": ",".join(map(str, run_ids))}
        if group_by:
            params["group_by"] = group_by
        return self._request("GET", "/compare", params=params).json()

    def download_checkpoint(self, run_id: int, path: str | os.PathLike[str]) -> Path:
        """Save the run's last checkpoint to `path` (a file, or a folder to put run-<id>-checkpoint.pt in).

        Written to a temporary file first, so an interrupted download never leaves a truncated file.
        """
        target = Path(path)
        if target.is_dir():
            target = target / f"run-{run_id}-checkpoint.pt"
        try:
            with self._http.stream("GET", f"/runs/{run_id}/checkpoint") as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                with atomic_write(target) as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.TransportError as err:
            raise ConnectionFailed(f"checkpoint download from {self.url} failed: {err}") from err
        return target

    # ---------------------------------------------------------- live stream ---

    def watch(self, run_id: int, *, max_reconnects: int = 20, reconnect_delay_s: float = 1.0) -> Iterator[StreamEvent]:
        """The run's live events until it finishes (the last one is "end").

        A dropped connection is reopened with Last-Event-ID, so metric points are neither lost nor
        repeated; history events already seen are skipped. Gives up (ConnectionFailed) after
        `max_reconnects` reconnections in a row that brought nothing.
        """
        last_id: str | None = None
        seen_history_id = 0
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with self._http.stream("GET", f"/runs/{run_id}/events", headers=headers,
                                       timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, read=STREAM_READ_TIMEOUT_S)) as response:
                    if response.is_error:
                        response.read()
                        raise ApiError.from_response(response)
                    for event in _parse_sse(response.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last_id = event.id
                        if event.event == "event":
                            if event.data.get("id", 0) <= seen_history_id:
                                continue  # replayed after a reconnection
                            seen_history_id = event.data["id"]
                        yield event
                        if event.event == "end":
                            return
                reason: str = "the stream closed before the run finished"
            except httpx.TransportError as err:
                reason = f"{type(err).__name__}: {err}"
            # Dropped or closed without "end" (server restart, proxy timeout): reconnect after a pause.
            failures += 1
            if failures > max_reconnects:
                raise ConnectionFailed(f"lost the event stream of run {run_id} ({reason})")
            time.sleep(reconnect_delay_s)

    def wait(self, run_id: int, *, timeout_s: float | None = None, poll_s: float = 1.0) -> Run:
        """Poll until the run finishes; TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = self.get_run(run_id)
            if run.finished:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run.status} after {timeout_s} s")
            time.sleep(poll_s)

    # ------------------------------------------------------------- changes ---

    def cancel(self, run_id: int) -> Run:
        """Queued: cancelled at once; running: stops after its current step (409 once finished)."""
        return Run.from_json(self._request("POST", f"/runs/{run_id}/cancel").json())

    def delete(self, run_id: int) -> None:
        """Delete a finished or queued run with its metrics and checkpoint (409 while running)."""
        self._request("DELETE", f"/runs/{run_id}")


def _parse_sse(lines: Iterator[str]) -> Iterator[StreamEvent]:
    """Server-Sent Events from text lines (the subset the server sends: id, event, data, comments)."""
    event_name, event_id, data_lines = "message", None, []
    for line in lines:
        if not line:
            if data_lines:
                yield StreamEvent(event_name, json.loads("\n".join(data_lines)), event_id)
            event_name, event_id, data_lines = "message", None, []
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event_name = value
            elif key == "data":
                data_lines.append(value)
            elif key == "id":
                event_id = value
