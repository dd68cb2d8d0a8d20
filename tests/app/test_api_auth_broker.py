"""The API token on mutating endpoints, and the broker: down → 503 with nothing created; Redis dispatch."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.models import Run, RunStatus

TOKEN = "s3cret-token-0123456789"

MUTATIONS = [
    ("POST", "/api/runs", {"model": "task1"}),
    ("PATCH", "/api/runs/{id}", {"name": "renamed"}),
    ("POST", "/api/runs/{id}/cancel", None),
    ("POST", "/api/runs/{id}/clone", {}),
    ("POST", "/api/sweeps", {"base": {"model": "task1"}, "grid": {"lr": [0.1]}}),
    ("DELETE", "/api/runs/{id}", None),
]


@pytest.fixture
def token_client(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory(TRAINBOARD_API_TOKEN=TOKEN)


def _call(client: TestClient, method: str, path: str, body: Any, run_id: int, **kwargs: Any) -> Any:
    return client.request(method, path.format(id=run_id), json=body, **kwargs)


@pytest.mark.parametrize("method, path, body", MUTATIONS)
def test_auth_mutation_without_token_401(token_client: TestClient, make_run: Callable[..., Run],
                                         method: str, path: str, body: Any) -> None:
    run_id = make_run().id
    response = _call(token_client, method, path, body, run_id)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    wrong = _call(token_client, method, path, body, run_id, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = _call(token_client, method, path, body, run_id, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.get(f"/api/runs/{run_id}", headers=bearer).json()["name"] == "run"  # nothing changed


@pytest.mark.parametrize("method, path, body", MUTATIONS)
def test_auth_mutation_with_bearer_token_passes(token_client: TestClient, make_run: Callable[..., Run],
                                                method: str, path: str, body: Any) -> None:
    response = _call(token_client, method, path, body, make_run().id, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code in (200, 201, 202, 204), response.text


def test_auth_session_cookie_passes(token_client: TestClient) -> None:
    token_client.post("/login", data={"token": TOKEN})
    csrf = token_client.cookies["trainboard_csrf"]  # cookie auth needs the CSRF echo
    assert token_client.post("/api/runs", json={"model": "task1"}, headers={"X-CSRF-Token": csrf}).status_code == 201
    token_client.cookies.clear()
    token_client.cookies.set("trainboard_token", TOKEN)  # the raw token in a cookie is no session
    token_client.cookies.set("trainboard_session", TOKEN)
    assert token_client.post("/api/runs", json={"model": "task1"}).status_code == 401


def test_auth_reads_need_the_token_too(token_client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    assert token_client.get("/api/health").status_code == 200  # the one open endpoint
    for path in ("/api/models", "/api/runs", f"/api/runs/{run_id}", f"/api/runs/{run_id}/metrics",
                 f"/api/runs/{run_id}/history", f"/api/compare?ids={run_id}",
                 f"/api/runs/{run_id}/checkpoint", f"/api/runs/{run_id}/visualize/confusion"):
        assert token_client.get(path).status_code == 401, path
        response = token_client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code not in (401, 403), path
    assert token_client.get(f"/api/runs/{run_id}/events").status_code == 401  # the live stream too


def test_auth_open_when_no_token_configured(client: TestClient) -> None:
    assert client.post("/api/runs", json={"model": "task1"}).status_code == 201


# -------------------------------------------------------------------- broker ---

def test_broker_down_gives_503_and_creates_nothing(client_factory: Callable[..., TestClient],
                                                   make_run: Callable[..., Run]) -> None:
    client = client_factory(BROKER_URL="redis://127.0.0.1:1/0")
    existing = make_run(status=RunStatus.succeeded).id
    response = client.post("/api/runs", json={"model": "task1"})
    assert response.status_code == 503
    assert "127.0.0.1:1" in response.json()["detail"] and "nothing was queued" in response.json()["detail"]
    clone = client.post(f"/api/runs/{existing}/clone", json={})
    sweep = client.post("/api/sweeps", json={"base": {"model": "task1"}, "grid": {"lr": [0.1, 0.2]}})
    assert clone.status_code == 503 and sweep.status_code == 503
    runs = client.get("/api/runs").json()  # reads keep working
    assert runs["count"] == 1 and runs["data"][0]["id"] == existing
    assert client.get(f"/api/runs/{existing}/history").status_code == 200
    assert client.get("/api/health").json()["broker"] == "down"


def test_broker_back_up_after_outage(client_factory: Callable[..., TestClient]) -> None:
    down = client_factory(BROKER_URL="redis://127.0.0.1:1/0")
    assert down.post("/api/runs", json={"model": "task1"}).status_code == 503
    up = client_factory()  # filesystem:// broker
    created = up.post("/api/runs", json={"model": "task1"})
    assert created.status_code == 201
    assert up.get("/api/runs").json()["count"] == 1


@pytest.mark.redis
def test_dispatch_to_redis_queues_the_task(client_factory: Callable[..., TestClient], redis_url: str) -> None:
    import redis

    client = client_factory(BROKER_URL=redis_url, TRAIN_QUEUE="train-test")
    run_id = client.post("/api/runs", json={"model": "task1"}).json()["id"]
    assert client.get("/api/health").json()["broker"] == "ok"
    connection = redis.Redis.from_url(redis_url)
    try:
        [raw] = connection.lrange("train-test", 0, -1)
    finally:
        connection.flushdb()
        connection.close()
    message = json.loads(raw)
    assert message["headers"]["task"] == "worker.tasks.train_run"
    assert json.loads(base64.b64decode(message["body"]))[0] == [run_id]
