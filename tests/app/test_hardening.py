"""Issue 7's reproductions, one test each: bad input gets a 4xx (never a 5xx), every resource has a
limit named in its message, and only allowed hosts and clients get in."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import Settings
from app.core.guards import host_allowed, host_of
from app.core.security import parse_id
from app.models import Run, RunStatus
from app.services.errors import TooManyRequests
from app.services.live import StreamSlots, run_event_stream
from app.services.viz_cache import keep_newest_files

HUGE_ID = "100000000000000000000"  # past int64
JSON = {"Content-Type": "application/json"}


def _post_raw(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text.encode(), headers=JSON)


# ------------------------------------------------------------ strict numbers ---

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309", "-1e999"])
def test_run_create_non_finite_lr_is_422(client: TestClient, literal: str) -> None:
    response = _post_raw(client, "/api/runs", f'{{"model": "task1", "hyperparameters": {{"lr": {literal}}}}}')
    assert response.status_code == 422, response.text
    assert "finite number" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json", None])
def test_non_finite_number_is_422_whatever_json_content_type(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/models/custom/parameters", content=b'{"model_options": {"dropout": NaN}}',
                           headers=headers)
    assert response.status_code == 422


def test_nan_in_model_options_is_never_stored_so_sorting_works(client: TestClient,
                                                               make_run: Callable[..., Run]) -> None:
    make_run(hyperparameters={"lr": 0.1})
    body = '{"model": "custom", "hyperparameters": {"lr": 0.1, "model_options": {"dropout": NaN}}}'
    assert _post_raw(client, "/api/runs", body).status_code == 422
    assert _post_raw(client, "/api/models/custom/parameters", '{"model_options": {"dropout": NaN}}').status_code == 422
    assert _post_raw(client, "/api/runs/1/clone", '{"hyperparameters": {"lr": NaN}}').status_code == 422
    for sort in ("lr", "batch_size", "epochs", "optimizer"):
        response = client.get(f"/api/runs?sort={sort}")
        assert response.status_code == 200 and response.json()["count"] == 1, sort
    assert client.get("/?sort=lr").status_code == 200


@pytest.mark.parametrize("query", ["limit=NaN", "limit=inf", "offset=-Infinity", "offset=1e20",
                                   f"offset={HUGE_ID}", "offset=1000000001", "limit=100000000000000000000"])
def test_run_list_non_finite_query_is_422(client: TestClient, query: str) -> None:
    assert client.get(f"/api/runs?{query}").status_code == 422


def test_metrics_non_finite_max_points_is_422(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    assert client.get(f"/api/runs/{run_id}/metrics?max_points=inf").status_code == 422
    assert client.get(f"/api/runs/{run_id}/events?after=NaN").status_code == 422


def test_validation_handler_encodes_what_json_cannot(client: TestClient) -> None:
    handler = client.app.exception_handlers[RequestValidationError]  # type: ignore[attr-defined]
    error = RequestValidationError([{"type": "x", "loc": ("body", "lr"), "msg": "bad",
                                     "input": {"a": float("nan"), "b": float("inf"), "c": b"\xff", "d": 10**40}}])
    response = asyncio.run(handler(None, error))
    assert response.status_code == 422
    assert json.loads(response.body)["detail"][0]["input"] == {"a": "nan", "b": "inf", "c": "\ufffd",
                                                               "d": str(10**40)}


# ---------------------------------------------------------------------- ids ---

@pytest.mark.parametrize("method, suffix", [
    ("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/cancel"), ("POST", "/clone"), ("GET", "/metrics"),
    ("GET", "/history"), ("GET", "/events"), ("GET", "/checkpoint"), ("GET", "/layers"), ("GET", "/visualize"),
    ("GET", "/visualize/confusion"),
])
def test_run_id_past_int64_is_404(client: TestClient, method: str, suffix: str) -> None:
    body = {"json": {"notes": "x"}} if method == "PATCH" else {}
    for run_id in (HUGE_ID, str(2**40), "0"):  # 2**40: past PostgreSQL's INTEGER
        response = client.request(method, f"/api/runs/{run_id}{suffix}", **body)
        assert response.status_code == 404, (run_id, response.text)


def test_run_page_id_past_int64_is_404(client: TestClient) -> None:
    assert client.get(f"/runs/{HUGE_ID}").status_code == 404


def test_compare_ids_past_int64_is_404(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    assert client.get(f"/api/compare?ids={run_id},{HUGE_ID}").status_code == 404
    assert client.get(f"/api/compare?ids={HUGE_ID}").status_code == 404
    assert client.get(f"/compare?ids={HUGE_ID}").status_code == 404
    assert client.get("/api/compare?ids=%C2%B2").status_code == 422


def test_sweep_base_run_id_past_int64_is_404(client: TestClient) -> None:
    response = client.post("/api/sweeps", json={"base_run_id": int(HUGE_ID), "grid": {"lr": [0.1]}})
    assert response.status_code == 404


def test_runs_page_past_the_last_possible_page_is_422(client: TestClient) -> None:
    assert client.get("/?page=1000000000000000000000").status_code == 422
    assert client.get("/?page=%C2%B2").status_code == 200  # not a number: the first page


def test_launch_clone_of_non_ascii_digits_is_404(client: TestClient) -> None:
    assert client.get("/runs/new?clone=%C2%B2").status_code == 404
    assert client.get(f"/runs/new?clone={HUGE_ID}").status_code == 404


def test_events_last_event_id_of_non_ascii_digits_starts_from_the_beginning(
        client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.succeeded).id
    for last_event_id in ("²³", "٣", HUGE_ID + "0" * 20):
        response = client.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": last_event_id.encode()})
        assert response.status_code == 200 and "event: end" in response.text


@pytest.mark.parametrize("text, expected", [("42", 42), (" 7 ", 7), ("²", None), ("٣", None), ("-1", None),
                                            ("1e3", None), ("", None), (None, None)])
def test_parse_id_accepts_ascii_digits_only(text: str | None, expected: int | None) -> None:
    assert parse_id(text) == expected


# ------------------------------------------------------------ model options ---

@pytest.mark.parametrize("options, where", [
    ({"activation": []}, "activation"), ({"init": {}}, "init"), ({"fc_activation": [1]}, "fc_activation"),
    ({"filters": [10**30]}, "filters"), ({"hidden": [2**64]}, "hidden"), ({"hidden": [8] * 100}, "hidden"),
    ({"kernel_size": 10**30}, "kernel_size"), ({"dropout": "x"}, "dropout"),
])
def test_model_options_wrong_type_or_huge_is_422(client: TestClient, options: dict[str, Any], where: str) -> None:
    response = client.post("/api/models/custom/parameters", json={"model_options": options})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "model_options", where]
    response = client.post("/api/runs", json={"model": "custom", "hyperparameters": {"model_options": options}})
    assert response.status_code == 422, response.text
    assert ["body", "hyperparameters", "model_options", where] in [e["loc"] for e in response.json()["detail"]]


def test_model_past_max_parameters_is_422_naming_the_setting(client: TestClient) -> None:
    options = {"filters": [2048] * 5, "hidden": [2048]}  # hundreds of millions: counted, never allocated
    response = client.post("/api/models/custom/parameters", json={"model_options": options})
    assert response.status_code == 422
    assert "MAX_MODEL_PARAMETERS" in response.json()["detail"][0]["msg"]
    response = client.post("/api/runs", json={"model": "custom", "hyperparameters": {"model_options": options}})
    assert response.status_code == 422 and "MAX_MODEL_PARAMETERS" in response.text


def test_model_width_limit_names_its_setting(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(MAX_MODEL_WIDTH=64)
    response = client.post("/api/models/custom/parameters", json={"model_options": {"filters": [128]}})
    assert response.status_code == 422 and "MAX_MODEL_WIDTH" in response.text
    assert client.post("/api/models/custom/parameters", json={"model_options": {"filters": [64]}}).status_code == 200


@pytest.mark.parametrize("upsample, message", [(1000, "MAX_UPSAMPLE"), (0, "at least 1"), (2.5, "whole number")])
def test_resnet18_upsample_out_of_bounds_is_422(client: TestClient, upsample: Any, message: str) -> None:
    response = client.post("/api/models/resnet18/parameters", json={"model_options": {"upsample": upsample}})
    assert response.status_code == 422 and message in response.text


# ------------------------------------------------------------------- bodies ---

def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_json_body_past_the_limit_is_413(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(MAX_REQUEST_BODY_BYTES=4096)
    response = client.post("/api/runs", content=b'{"model": "task1", "notes": "' + b"x" * 5000 + b'"}', headers=JSON)
    assert response.status_code == 413 and "MAX_REQUEST_BODY_BYTES" in response.text
    chunked = client.post("/api/runs", content=_chunks(10_000, 1000), headers=JSON)  # no Content-Length
    assert chunked.status_code == 413


def test_chunked_upload_past_the_limit_is_413(client_factory: Callable[..., TestClient],
                                              make_run: Callable[..., Run]) -> None:
    client = client_factory(MAX_UPLOAD_BYTES=4096)
    run_id = make_run(status=RunStatus.succeeded).id
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body() -> Iterator[bytes]:  # a generator: sent chunked, with no Content-Length to check
        yield head
        yield from _chunks(200 * 1024, 8 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(f"/api/runs/{run_id}/visualize/activations", content=body(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "MAX_UPLOAD_BYTES" in response.text


def test_upload_declaring_a_large_body_is_413_unread(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(MAX_UPLOAD_BYTES=4096)
    response = client.post("/api/runs/1/visualize/activations", content=b"x" * 100_000,
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413


# ---------------------------------------------------------------------- SSE ---

def test_stream_slots_limit_per_client_and_in_all() -> None:
    slots = StreamSlots(per_client=2, total=3)
    first, _second = slots.acquire("a"), slots.acquire("a")
    with pytest.raises(TooManyRequests, match="SSE_MAX_STREAMS_PER_CLIENT"):
        slots.acquire("a")
    slots.acquire("b")
    with pytest.raises(TooManyRequests, match="SSE_MAX_STREAMS"):
        slots.acquire("c")
    first()
    first()  # giving a slot back twice frees it once
    assert slots.count("a") == 1 and slots.count() == 2
    slots.acquire("c")


def test_events_past_the_stream_limit_is_429_and_a_finished_stream_frees_its_slot(
        client_factory: Callable[..., TestClient], make_run: Callable[..., Run]) -> None:
    client = client_factory(SSE_MAX_STREAMS_PER_CLIENT=1)
    run_id = make_run(status=RunStatus.succeeded).id
    assert client.get(f"/api/runs/{run_id}/events").status_code == 200  # ends with the run
    assert client.get(f"/api/runs/{run_id}/events").status_code == 200  # so its slot was given back
    client.app.state.stream_slots.acquire("testclient")  # type: ignore[attr-defined]  # one stream open
    response = client.get(f"/api/runs/{run_id}/events")
    assert response.status_code == 429 and "SSE_MAX_STREAMS_PER_CLIENT" in response.text
    assert response.headers["Retry-After"]


def test_stream_of_a_queued_run_ends_after_its_maximum_duration(engine: Any, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.queued).id

    async def collect() -> list[str]:
        return [message async for message in run_event_stream(
            engine=engine, run_id=run_id, poll_interval_s=0.02, keepalive_s=0.05, max_duration_s=0.3)]

    messages = asyncio.run(collect())
    assert any(m.startswith(": keep-alive") for m in messages)  # keep-alives while nothing happens
    assert not any("event: end" in m for m in messages)  # it ended by time, the run is still queued


def test_stream_ends_when_the_client_leaves(engine: Any, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    polls = 0

    async def gone() -> bool:
        nonlocal polls
        polls += 1
        return polls >= 3

    async def collect() -> list[str]:
        return [message async for message in run_event_stream(
            engine=engine, run_id=run_id, poll_interval_s=0.01, is_disconnected=gone, max_duration_s=60)]

    messages = asyncio.run(collect())
    assert polls == 3 and not any("event: end" in m for m in messages)


# ------------------------------------------------------------------- hosts ---

def test_dns_rebinding_host_is_400(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    response = client.post(f"/api/runs/{run_id}/cancel",
                           headers={"Host": "evil.example:8000", "Origin": "http://evil.example:8000"})
    assert response.status_code == 400 and "ALLOWED_HOSTS" in response.text
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "queued"


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
def test_local_hosts_are_allowed_by_default(client: TestClient, host: str) -> None:
    assert client.get("/api/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_setting_replaces_the_defaults(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(ALLOWED_HOSTS="board.example.org,*.lab.example")
    assert client.get("/api/health", headers={"Host": "board.example.org"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "gpu1.lab.example:8000"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "127.0.0.1"}).status_code == 400


def test_bind_host_is_allowed(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path, BIND_HOST="10.1.2.3")
    assert "10.1.2.3" in settings.allowed_hosts and "::1" in settings.allowed_hosts


@pytest.mark.parametrize("header, host", [("a.example:80", "a.example"), ("[::1]:8000", "::1"), ("", None),
                                          ("[bad", None)])
def test_host_of_reads_names_ports_and_ipv6(header: str, host: str | None) -> None:
    assert host_of(header) == host
    assert host_allowed(host, ["::1", "a.example"]) == (host is not None)


# -------------------------------------------------------------------- auth ---

def test_token_shorter_than_16_characters_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(_env_file=None, DATA_DIR=tmp_path, TRAINBOARD_API_TOKEN="short-token")


# ------------------------------------------------------------------- edits ---

def test_patch_with_a_stale_version_is_409(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    first = client.patch(f"/api/runs/{run_id}", json={"notes": "mine", "version": 1})
    assert first.status_code == 200 and first.json()["version"] == 2
    stale = client.patch(f"/api/runs/{run_id}", json={"notes": "theirs", "version": 1})
    assert stale.status_code == 409 and "version" in stale.json()["detail"]
    assert client.get(f"/api/runs/{run_id}").json()["notes"] == "mine"
    assert client.patch(f"/api/runs/{run_id}", json={"notes": "no version"}).json()["version"] == 3


# ----------------------------------------------------------- visualisations ---

def test_visualize_past_the_concurrency_limit_is_429(client_factory: Callable[..., TestClient],
                                                     make_run: Callable[..., Run]) -> None:
    client = client_factory(VISUALIZE_MAX_CONCURRENT=1)
    run_id = make_run(status=RunStatus.succeeded).id
    assert client.get(f"/api/runs/{run_id}/visualize/confusion").status_code == 409  # no checkpoint; slot freed
    assert client.get(f"/api/runs/{run_id}/visualize/confusion").status_code == 409
    slots = client.app.state.visualize_slots  # type: ignore[attr-defined]
    assert slots.acquire(blocking=False)  # one visualisation computing
    response = client.get(f"/api/runs/{run_id}/visualize/confusion")
    assert response.status_code == 429 and "VISUALIZE_MAX_CONCURRENT" in response.text
    slots.release()


def test_visualization_cache_keeps_the_newest_files(tmp_path: Path) -> None:
    for index in range(5):
        path = tmp_path / f"activations-{index}.json"
        path.write_text("{}")
        os.utime(path, ns=(index * 10**9, index * 10**9))
    keep_newest_files(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"activations-{i}.json" for i in (2, 3, 4)]
