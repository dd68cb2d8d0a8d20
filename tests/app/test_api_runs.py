"""POST/GET/PATCH/DELETE /api/runs and the per-run endpoints (cancel, clone, history, checkpoint, layers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.db import utcnow
from app.models import Run, RunStatus
from ml.models import build_model
from ml.visualize import layer_table


def field_errors(response: Any) -> dict[tuple, str]:
    assert response.status_code == 422, response.text
    return {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}


# --------------------------------------------------------------------- create ---

def test_create_run_resolves_preset_and_dispatches(client: TestClient, broker_messages: Callable) -> None:
    response = client.post("/api/runs", json={"model": "net2", "hyperparameters": {"lr": 0.2}, "tags": ["a", " a", "b"]})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["status"] == "queued" and run["name"] == f"net2-{run['id']}"
    assert run["hyperparameters"]["lr"] == 0.2  # override
    assert run["hyperparameters"]["scheduler"] == "multistep" and run["hyperparameters"]["milestones"] == [4, 8]
    assert run["hyperparameters"]["val_fraction"] == 0.1  # TrainConfig default
    assert run["parameters"] == 817834 and run["tags"] == ["a", "b"]
    assert run["created_at"].endswith(("Z", "+00:00"))
    assert broker_messages() == [{"task": "worker.tasks.train_run", "args": [run["id"]], "queue": "train"}]


def test_create_run_minimal_body_uses_sample_without_cifar10(client: TestClient) -> None:
    run = client.post("/api/runs", json={"model": "task1", "name": "baseline"}).json()
    assert run["name"] == "baseline" and run["dataset"]["name"] == "cifar10-sample"
    assert run["dataset"]["kind"] == "imagefolder" and len(run["dataset"]["fingerprint"]) == 16
    assert run["hyperparameters"]["epochs"] == 100 and run["parameters"] == 390410


def test_create_run_imagefolder_with_existing_path(client_factory: Callable, cifar_subset: Path) -> None:
    client = client_factory(DATASET_ROOTS=str(cifar_subset.parent))
    response = client.post("/api/runs", json={"model": "task1", "dataset": {
        "kind": "imagefolder", "path": str(cifar_subset), "limit_train": 100}})
    assert response.status_code == 201, response.text
    dataset = response.json()["dataset"]
    assert dataset["path"] == str(cifar_subset) and dataset["name"] is None  # not a listed dataset
    assert len(dataset["fingerprint"]) == 16


@pytest.mark.parametrize("body, loc, fragment", [
    ({"model": "vgg"}, ("body", "model"), "valid models: task1, net1, net2, resnet18, custom"),
    ({"model": "task1", "hyperparameters": {"lr": 0}}, ("body", "hyperparameters", "lr"), "greater than 0"),
    ({"model": "task1", "hyperparameters": {"lr": -1}}, ("body", "hyperparameters", "lr"), "greater than 0"),
    ({"model": "task1", "hyperparameters": {"batch_size": 0}}, ("body", "hyperparameters", "batch_size"), "1"),
    ({"model": "task1", "hyperparameters": {"batch_size": 5000}}, ("body", "hyperparameters", "batch_size"), "4096"),
    ({"model": "task1", "hyperparameters": {"epochs": 1001}}, ("body", "hyperparameters", "epochs"), "1000"),
    ({"model": "task1", "hyperparameters": {"optimizer": "rmsprop"}}, ("body", "hyperparameters", "optimizer"),
     "'sgd' or 'adam'"),
    ({"model": "task1", "hyperparameters": {"milestones": [5, 3]}}, ("body", "hyperparameters", "milestones"),
     "increasing"),
    ({"model": "task1", "hyperparameters": {"milestones": "5,3"}}, ("body", "hyperparameters", "milestones"),
     "list"),
    ({"model": "task1", "hyperparameters": {"learning_rate": 0.1}}, ("body", "hyperparameters", "learning_rate"),
     "Extra inputs"),
    ({"model": "task1", "hyperparameters": {"nesterov": True}}, ("body", "hyperparameters", "nesterov"),
     "momentum > 0"),
    ({"model": "task1", "dataset": {"kind": "imagefolder", "path": "/definitely/not/here"}},
     ("body", "dataset", "path"), "outside the allowed dataset roots"),
    ({"model": "task1", "dataset": {"kind": "imagefolder"}}, ("body", "dataset", "path"), "needs a path"),
    ({"model": "task1", "dataset": {"kind": "mnist"}}, ("body", "dataset", "kind"), "'cifar10' or 'imagefolder'"),
    ({"model": "task1", "dataset": {"limit_train": 5}}, ("body", "dataset", "limit_train"), "10"),
    ({"model": "custom", "hyperparameters": {"model_options": {"filters": [8, 8, 8, 8, 8, 8]}}},
     ("body", "hyperparameters", "model_options", "filters"), "at most 5 blocks"),
    ({"model": "custom", "hyperparameters": {"model_options": {"width": 3}}},
     ("body", "hyperparameters", "model_options", "width"), "unknown model option"),
    ({"model": "task1", "name": ""}, ("body", "name"), "at least 1 character"),
    ({"model": "task1", "colour": "red"}, ("body", "colour"), "Extra inputs"),
    ({}, ("body", "model"), "Field required"),
])
def test_create_run_invalid_body_gives_field_error(client: TestClient, broker_messages: Callable,
                                                   body: dict, loc: tuple, fragment: str) -> None:
    errors = field_errors(client.post("/api/runs", json=body))
    assert loc in errors, errors
    assert fragment in errors[loc]
    assert client.get("/api/runs").json()["count"] == 0 and broker_messages() == []


def test_create_run_imagefolder_without_train_folder(client_factory: Callable, tmp_path: Path) -> None:
    client = client_factory(DATASET_ROOTS=str(tmp_path))
    (tmp_path / "flat").mkdir()
    errors = field_errors(client.post("/api/runs", json={"model": "task1", "dataset": {
        "kind": "imagefolder", "path": str(tmp_path / "flat")}}))
    assert "train/" in errors[("body", "dataset", "path")]


def test_create_run_reports_every_bad_field_at_once(client: TestClient) -> None:
    errors = field_errors(client.post("/api/runs", json={
        "model": "task1", "hyperparameters": {"lr": 0, "batch_size": 0, "optimizer": "x"}}))
    assert {("body", "hyperparameters", key) for key in ("lr", "batch_size", "optimizer")} <= set(errors)


# ----------------------------------------------------------------- list, get ---

def test_list_runs_filters_sorts_and_pages(client: TestClient, make_run: Callable[..., Run]) -> None:
    make_run(name="alpha", model="task1", tags=["baseline"], best_val_acc=0.5)
    make_run(name="beta", model="net1", status=RunStatus.running, best_val_acc=0.7, notes="lr sweep")
    make_run(name="gamma", model="net1", status=RunStatus.succeeded, tags=["baseline", "x"], best_val_acc=0.6)
    make_run(name="100%_done", model="net2", status=RunStatus.failed)

    def names(query: str) -> list[str]:
        response = client.get(f"/api/runs?{query}")
        assert response.status_code == 200, response.text
        return [run["name"] for run in response.json()["data"]]

    assert names("") == ["100%_done", "gamma", "beta", "alpha"]  # newest first
    assert names("model=net1&sort=name&order=asc") == ["beta", "gamma"]
    assert names("status=running,succeeded&sort=name&order=asc") == ["beta", "gamma"]
    assert names("status=running&status=failed&sort=name&order=asc") == ["100%_done", "beta"]
    assert names("tag=baseline&sort=name&order=asc") == ["alpha", "gamma"]
    assert names("tag=basel") == []
    assert names("q=AMM") == ["gamma"]
    assert names("q=sweep") == ["beta"]  # notes too
    assert names("q=%25_") == ["100%_done"]  # % and _ are literal
    assert names("sort=best_val_acc&order=desc") == ["beta", "gamma", "alpha", "100%_done"]  # NULLs last
    assert names("sort=best_val_acc&order=asc") == ["alpha", "gamma", "beta", "100%_done"]
    page = client.get("/api/runs?sort=name&order=asc&limit=2&offset=1").json()
    assert page["count"] == 4 and [run["name"] for run in page["data"]] == ["alpha", "beta"]


def test_list_runs_sorts_by_hyperparameter(client: TestClient, make_run: Callable[..., Run]) -> None:
    for name, lr, optimizer in (("a", 0.1, "sgd"), ("b", 0.001, "adam"), ("c", 0.05, "sgd")):
        make_run(name=name, hyperparameters={"lr": lr, "batch_size": 64, "epochs": 10, "optimizer": optimizer})
    by_lr = client.get("/api/runs?sort=lr&order=asc").json()["data"]
    assert [run["name"] for run in by_lr] == ["b", "c", "a"]
    by_optimizer = client.get("/api/runs?sort=optimizer&order=desc").json()["data"]
    assert [run["name"] for run in by_optimizer] == ["c", "a", "b"]  # sgd before adam, newest first


@pytest.mark.parametrize("query, loc", [
    ("sort=password", ("query", "sort")),
    ("order=sideways", ("query", "order")),
    ("status=paused", ("query", "status")),
    ("limit=0", ("query", "limit")),
    ("limit=501", ("query", "limit")),
    ("offset=-1", ("query", "offset")),
])
def test_list_runs_bad_query_gives_422(client: TestClient, query: str, loc: tuple) -> None:
    assert loc in field_errors(client.get(f"/api/runs?{query}"))


def test_get_run_and_404(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run(name="one").id
    assert client.get(f"/api/runs/{run_id}").json()["name"] == "one"
    response = client.get("/api/runs/999")
    assert response.status_code == 404 and "999" in response.json()["detail"]
    assert client.get("/api/runs/abc").status_code == 422


# ------------------------------------------------------------------- change ---

def test_patch_run_edits_name_tags_notes(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run(name="old", tags=["t"]).id
    response = client.patch(f"/api/runs/{run_id}", json={"name": "new", "tags": ["x", "y"]})
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["tags"], response.json()["notes"]) == ("new", ["x", "y"], "")
    assert client.patch(f"/api/runs/{run_id}", json={"notes": "good run"}).json()["name"] == "new"


@pytest.mark.parametrize("body, loc", [
    ({"status": "succeeded"}, ("body", "status")),
    ({"name": ""}, ("body", "name")),
    ({"tags": "abc"}, ("body", "tags")),
    ({"tags": ["x" * 65]}, ("body", "tags")),
])
def test_patch_run_rejects_other_fields(client: TestClient, make_run: Callable[..., Run], body: dict,
                                        loc: tuple) -> None:
    assert loc in field_errors(client.patch(f"/api/runs/{make_run().id}", json=body))


def test_patch_unknown_run_404(client: TestClient) -> None:
    assert client.patch("/api/runs/77", json={"name": "x"}).status_code == 404


def test_cancel_queued_run_is_immediate(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    response = client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None
    assert client.get(f"/api/runs/{run_id}/history").json()[-1]["kind"] == "cancelled"


def test_cancel_running_run_requests_it(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running, started_at=utcnow()).id
    response = client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 202  # asking twice is fine


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_run_409(client: TestClient, make_run: Callable[..., Run], status: str) -> None:
    response = client.post(f"/api/runs/{make_run(status=status).id}/cancel")
    assert response.status_code == 409 and status in response.json()["detail"]


def test_cancel_unknown_run_404(client: TestClient) -> None:
    assert client.post("/api/runs/5/cancel").status_code == 404


def test_delete_run_removes_metrics_events_and_artifacts(client: TestClient, settings: Settings,
                                                         make_run: Callable[..., Run], session: Any) -> None:
    from sqlalchemy import func, select

    from app.models import MetricPoint, RunEvent
    from app.services.lifecycle import add_event, add_metric_points

    run_id = make_run(status=RunStatus.succeeded).id
    add_metric_points(session=session, run_id=run_id, points=[
        {"step": i, "epoch": 0.0, "name": "train/loss", "value": 1.0, "time": 0.0} for i in range(10)])
    add_event(session=session, run_id=run_id, kind="info", message="x")
    artifacts = settings.ARTIFACTS_DIR / str(run_id)
    artifacts.mkdir(parents=True)
    (artifacts / "last.pt").write_bytes(b"weights")
    keep = make_run(status=RunStatus.succeeded, cloned_from=run_id).id

    assert client.delete(f"/api/runs/{run_id}").status_code == 204
    assert client.get(f"/api/runs/{run_id}").status_code == 404
    assert not artifacts.exists()
    session.rollback()  # a fresh snapshot
    assert session.scalar(select(func.count()).select_from(MetricPoint)) == 0
    assert session.scalar(select(func.count()).select_from(RunEvent)) == 0
    assert client.get(f"/api/runs/{keep}").json()["cloned_from"] is None  # ON DELETE SET NULL


def test_delete_running_run_409(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    assert client.delete(f"/api/runs/{run_id}").status_code == 409
    assert client.get(f"/api/runs/{run_id}").status_code == 200


def test_delete_unknown_run_404(client: TestClient) -> None:
    assert client.delete("/api/runs/31").status_code == 404


# -------------------------------------------------------------------- clone ---

def test_clone_run_merges_overrides(client: TestClient, broker_messages: Callable) -> None:
    original = client.post("/api/runs", json={"model": "net1", "hyperparameters": {"lr": 0.2, "epochs": 5},
                                              "tags": ["base"]}).json()
    response = client.post(f"/api/runs/{original['id']}/clone",
                           json={"hyperparameters": {"epochs": 7}, "dataset": {"augment": True}})
    assert response.status_code == 201, response.text
    clone = response.json()
    assert clone["cloned_from"] == original["id"] and clone["id"] != original["id"]
    assert clone["hyperparameters"] == {**original["hyperparameters"], "epochs": 7}
    assert clone["dataset"]["augment"] is True and clone["tags"] == ["base"]
    assert [m["args"] for m in broker_messages()] == [[original["id"]], [clone["id"]]]


def test_clone_with_other_model_starts_from_its_preset(client: TestClient) -> None:
    original = client.post("/api/runs", json={"model": "net1", "hyperparameters": {"lr": 0.2}}).json()
    clone = client.post(f"/api/runs/{original['id']}/clone", json={"model": "resnet18"}).json()
    assert clone["model"] == "resnet18" and clone["hyperparameters"]["optimizer"] == "adam"
    assert clone["hyperparameters"]["lr"] == 5e-4


def test_clone_without_body(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.succeeded, dataset={"name": "cifar10-sample", "fingerprint": "0" * 16}).id
    response = client.post(f"/api/runs/{run_id}/clone")
    assert response.status_code == 201 and response.json()["cloned_from"] == run_id


def test_clone_invalid_override_422(client: TestClient, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    errors = field_errors(client.post(f"/api/runs/{run_id}/clone", json={"hyperparameters": {"lr": -1}}))
    assert ("body", "hyperparameters", "lr") in errors
    assert ("body", "model") in field_errors(client.post(f"/api/runs/{run_id}/clone", json={"model": "x"}))


def test_clone_unknown_run_404(client: TestClient) -> None:
    assert client.post("/api/runs/404/clone", json={}).status_code == 404


# -------------------------------------------------------- history, checkpoint ---

def test_history_lists_events_in_order(client: TestClient) -> None:
    run_id = client.post("/api/runs", json={"model": "task1"}).json()["id"]
    client.post(f"/api/runs/{run_id}/cancel")
    history = client.get(f"/api/runs/{run_id}/history").json()
    assert [event["kind"] for event in history] == ["queued", "cancelled"]
    assert client.get("/api/runs/999/history").status_code == 404


def test_checkpoint_download(client: TestClient, settings: Settings, make_run: Callable[..., Run]) -> None:
    folder = settings.ARTIFACTS_DIR / "1"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"\x00weights")
    run_id = make_run(status=RunStatus.succeeded, checkpoint_path="1/last.pt").id
    response = client.get(f"/api/runs/{run_id}/checkpoint")
    assert response.status_code == 200 and response.content == b"\x00weights"
    assert "attachment" in response.headers["content-disposition"]
    absolute = make_run(status=RunStatus.succeeded, checkpoint_path=str(folder / "last.pt")).id
    assert client.get(f"/api/runs/{absolute}/checkpoint").content == b"\x00weights"


def test_checkpoint_missing_404(client: TestClient, make_run: Callable[..., Run]) -> None:
    assert client.get(f"/api/runs/{make_run().id}/checkpoint").status_code == 404
    gone = make_run(checkpoint_path="9/never-written.pt").id
    assert client.get(f"/api/runs/{gone}/checkpoint").status_code == 404
    assert client.get("/api/runs/999/checkpoint").status_code == 404


@pytest.mark.parametrize("escape", ["../secret.txt", "1/../../secret.txt", "{outside}", "1/link.pt"])
def test_checkpoint_outside_artifacts_dir_is_refused(client: TestClient, settings: Settings, tmp_path: Path,
                                                     make_run: Callable[..., Run], escape: str) -> None:
    secret = settings.ARTIFACTS_DIR.parent / "secret.txt"
    secret.write_text("password")
    (settings.ARTIFACTS_DIR / "1").mkdir(parents=True, exist_ok=True)
    (settings.ARTIFACTS_DIR / "1" / "link.pt").symlink_to(secret)  # a symlink pointing out counts as outside
    run_id = make_run(checkpoint_path=escape.format(outside=secret)).id
    response = client.get(f"/api/runs/{run_id}/checkpoint")
    assert response.status_code == 403 and "password" not in response.text


# -------------------------------------------------------------------- layers ---

def test_run_layers_use_the_runs_model_options(client: TestClient) -> None:
    options = {"filters": [8], "convs_per_block": 1, "hidden": []}
    run = client.post("/api/runs", json={"model": "custom", "hyperparameters": {"model_options": options}}).json()
    layers = client.get(f"/api/runs/{run['id']}/layers").json()
    assert layers == layer_table(build_model("custom", options, pretrained=False))
    assert sum(layer["parameters"] for layer in layers) == run["parameters"]
    assert layers[0]["shape"] == "8x3x3x3"
