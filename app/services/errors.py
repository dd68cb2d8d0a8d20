"""Domain errors raised by the services; app/main.py maps them to HTTP responses.

Services stay free of HTTP, so the worker and the CLI can call them too.
"""

from __future__ import annotations

from typing import Any

Loc = tuple[str | int, ...]


class ServiceError(Exception):
    """Base class of the errors below."""


class NotFound(ServiceError):
    """404: e.g. a run id that does not exist."""


class Conflict(ServiceError):
    """409: the request does not fit the run's status (cancel a finished run, delete a running one)."""


class Forbidden(ServiceError):
    """403: e.g. a checkpoint path outside ARTIFACTS_DIR."""


class BrokerUnavailable(ServiceError):
    """503: the task could not be handed to the broker; nothing was queued."""


class TooManyRequests(ServiceError):
    """429: a limit on concurrent use was reached (e.g. live streams); retry later."""


class InvalidInput(ServiceError):
    """422 with field-level messages, in FastAPI's format.

    errors: (location inside the request body, message) pairs, e.g.
    (("hyperparameters", "lr"), "must be greater than 0").
    """

    def __init__(self, errors: list[tuple[Loc, str]]):
        self.errors = list(errors)
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in self.errors))

    def as_fastapi_errors(self, prefix: Loc = ("body",)) -> list[dict[str, Any]]:
        return [{"type": "value_error", "loc": [*prefix, *loc], "msg": msg, "input": None}
                for loc, msg in self.errors]


# ------------------------------------------------------- visualisations ---

class NoCheckpointYet(Conflict):
    """409: the run has not saved a checkpoint yet (it is queued, or before its first evaluation)."""


class CheckpointUnreadable(Conflict):
    """409: the checkpoint file exists but cannot be loaded (truncated, or not a trainboard checkpoint)."""


class DataUnavailable(Conflict):
    """409: the run's test images cannot be loaded here (e.g. its dataset is not on this machine)."""


class UploadRejected(Exception):
    """An upload the dashboard refuses; `status_code` is the HTTP status, the message is for the user."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
