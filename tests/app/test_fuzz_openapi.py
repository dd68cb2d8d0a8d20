"""Property-based fuzz of the whole OpenAPI schema: no input, valid or not, gets a server error.

schemathesis turns every operation of /openapi.json into Hypothesis strategies, in its positive
(schema-valid) and negative (schema-violating) modes. The examples are derandomized (a fixed
seed) and bounded, so a run takes the same path every time and stays within seconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from app.core.config import Settings
from app.core.db import utcnow
from app.main import create_app
from app.models import Run, RunStatus

EXAMPLES_PER_OPERATION = 8


@pytest.fixture
def fuzz_client(sqlite_template: Path, tmp_path: Path) -> Iterator[TestClient]:
    """An app on its own SQLite copy, with three runs to aim at, and short live streams."""
    from sqlmodel import Session

    from app.services.metrics import DEFAULT_METRICS_CACHE

    database = tmp_path / "fuzz.db"
    shutil.copy(sqlite_template, database)
    app_settings = Settings(_env_file=None, DATA_DIR=tmp_path / "data", DATABASE_URL=f"sqlite:///{database}",
                            WATCHDOG_INTERVAL_S=3600, SSE_POLL_INTERVAL_S=0.02, SSE_MAX_STREAM_S=0.2,
                            ALLOWED_HOSTS="127.0.0.1,localhost,testserver")
    DEFAULT_METRICS_CACHE.clear()
    app = create_app(app_settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        with Session(app.state.engine) as session:
            for status in (RunStatus.queued, RunStatus.succeeded, RunStatus.failed):
                session.add(Run(name=f"run-{status}", model="task1", dataset={"kind": "cifar10"},
                                hyperparameters={"lr": 0.05, "batch_size": 64}, parameters=390410,
                                status=status, created_at=utcnow()))
            session.commit()
        yield client


def _transport_kwargs(case: Any) -> dict[str, Any]:
    """The case as httpx keyword arguments for the test client."""
    kwargs = case.as_transport_kwargs(base_url="http://127.0.0.1")
    request: dict[str, Any] = {key: kwargs[key] for key in ("method", "url", "headers", "params")
                               if kwargs.get(key) is not None}
    for key in ("json", "data", "content"):
        if key in kwargs and kwargs[key] is not None:
            request[key] = kwargs[key]
    if kwargs.get("files"):  # httpx needs bytes where the schema's file field got any JSON value
        request["files"] = {name: _as_file(value) for name, value in dict(kwargs["files"]).items()}
    return request


def _as_file(value: Any) -> Any:
    """(filename, bytes[, content type]) from whatever the generator put in the file field."""
    filename, content, rest = "upload", value, ()
    if isinstance(value, tuple) and len(value) >= 2:
        filename, content, rest = str(value[0]), value[1], tuple(value[2:3])
    if not isinstance(content, bytes):
        content = content.encode() if isinstance(content, str) else str(content).encode()
    return (filename, content, *rest)


def test_fuzz_openapi_finds_no_server_error(fuzz_client: TestClient) -> None:
    schema = schemathesis.openapi.from_dict(fuzz_client.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # the whole API, not a corner of it
    failures: list[str] = []
    checked = 0
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(data=st.data())
            def call(data: st.DataObject) -> None:
                nonlocal checked
                case = data.draw(strategy)
                try:
                    request = fuzz_client.build_request(**_transport_kwargs(case))
                except (TypeError, AttributeError, ValueError):
                    return  # a body the HTTP client cannot even encode never reaches a server
                try:
                    response = fuzz_client.send(request)
                except Exception as err:  # noqa: BLE001 - the app raising through the client is a 500 too
                    failures.append(f"{case.method} {case.formatted_path}: raised {err!r}")
                    return
                checked += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}: "
                                    f"{response.status_code} {response.text[:200]}")

            try:
                call()
            except Unsatisfiable:  # nothing to get wrong (e.g. GET /api/health has no inputs to violate)
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n".join(failures[:20])
    assert checked >= len(operations) * 4
