"""GET /api/health, GET /api/models and GET /api/models/{name}/layers, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.services.lifecycle import worker_heartbeat
from ml.models import build_model
from ml.visualize import layer_table


def test_health_ok_with_filesystem_broker(client: TestClient) -> None:
    assert client.get("/api/health").json() == {"status": "ok", "database": "ok", "broker": "ok", "workers": 0}


def test_health_counts_live_workers(client: TestClient, session: Session) -> None:
    worker_heartbeat(session=session, hostname="gpu-1", pid=1)
    worker_heartbeat(session=session, hostname="gpu-2", pid=2)
    assert client.get("/api/health").json()["workers"] == 2


def test_health_reports_broker_down(client_factory: Callable[..., Any]) -> None:
    client = client_factory(BROKER_URL="redis://127.0.0.1:1/0")
    assert client.get("/api/health").json() == {"status": "ok", "database": "ok", "broker": "down", "workers": 0}


def test_health_reports_database_down(client: TestClient) -> None:
    from app.core.db import create_db_engine

    # Swap in an engine for a closed port: the app must answer, not raise.
    client.app.state.engine = create_db_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    body = client.get("/api/health").json()
    assert body["database"] == "down" and body["status"] == "degraded"


def test_models_list_presets_with_parameter_counts(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert list(models) == ["task1", "net1", "net2", "resnet18", "custom"]
    assert models["task1"]["parameters"] == 390410  # the study's task 1c
    assert models["resnet18"]["trainable_parameters"] < models["resnet18"]["parameters"]
    assert models["net2"]["defaults"]["milestones"] == [4, 8] and models["net2"]["defaults"]["val_fraction"] == 0.1
    assert models["resnet18"]["defaults"]["optimizer"] == "adam"


def test_model_layers_table(client: TestClient) -> None:
    layers = client.get("/api/models/task1/layers").json()
    assert layers == layer_table(build_model("task1", {}, pretrained=False))
    assert [layer["parameters"] for layer in layers] == [2432, 51264, 204928, 131136, 650]
    assert set(layers[0]) == {"name", "type", "shape", "weights", "biases", "parameters", "trainable", "formula"}


def test_model_layers_unknown_model_404_lists_valid_names(client: TestClient) -> None:
    response = client.get("/api/models/vgg16/layers")
    assert response.status_code == 404 and "task1, net1, net2, resnet18, custom" in response.json()["detail"]


def test_openapi_declares_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/metrics", "/api/runs/{run_id}/events",
            "/api/runs/{run_id}/checkpoint", "/api/runs/{run_id}/cancel", "/api/runs/{run_id}/clone",
            "/api/sweeps", "/api/compare", "/api/health", "/api/models", "/api/models/{name}/layers"} <= set(spec["paths"])
    lr = spec["components"]["schemas"]["HyperparametersIn"]["properties"]["lr"]["anyOf"][0]
    assert lr["exclusiveMinimum"] == 0 and lr["maximum"] == 10  # constraints from ml/config.py
    assert client.get("/docs").status_code == 200


def test_model_parameters_with_custom_options_counts_them(client: TestClient) -> None:
    wide = client.post("/api/models/custom/parameters", json={"model_options": {"filters": [64, 128], "hidden": []}})
    assert wide.status_code == 200
    # conv 3→64 and 64→64, conv 64→128 and 128→128 (k3) with BN, then Linear(128*8*8 → 10)
    expected = (1792 + 36928 + 73856 + 147584) + 2 * (64 + 64 + 128 + 128) + (8192 * 10 + 10)
    assert wide.json() == {"parameters": expected, "trainable_parameters": expected}
    task1 = client.post("/api/models/task1/parameters", json={"model_options": {}})
    assert task1.json()["parameters"] == 390_410


def test_model_parameters_bad_option_is_422_with_field(client: TestClient) -> None:
    response = client.post("/api/models/custom/parameters", json={"model_options": {"kernel_size": 7}})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"][-2:] == ["model_options", "kernel_size"] and "3, 5" in error["msg"]
    assert client.post("/api/models/vgg/parameters", json={}).status_code == 404
