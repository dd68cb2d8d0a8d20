"""POST /api/sweeps and GET /api/compare."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.models import Run, RunStatus


def test_sweep_queues_one_run_per_combination(client: TestClient, broker_messages: Callable) -> None:
    response = client.post("/api/sweeps", json={
        "base": {"model": "net1", "name": "grid", "hyperparameters": {"epochs": 3}, "tags": ["study"]},
        "grid": {"lr": [0.1, 0.05], "batch_size": [32, 64]}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["count"] == 4
    combos = {(r["hyperparameters"]["lr"], r["hyperparameters"]["batch_size"]) for r in body["data"]}
    assert combos == {(0.1, 32), (0.1, 64), (0.05, 32), (0.05, 64)}
    assert all(r["hyperparameters"]["epochs"] == 3 and r["model"] == "net1" for r in body["data"])
    assert body["data"][0]["name"] == "grid [lr=0.1, batch_size=32]"
    sweep_tags = {tag for r in body["data"] for tag in r["tags"] if tag.startswith("sweep:")}
    assert len(sweep_tags) == 1 and all("study" in r["tags"] for r in body["data"])
    assert sorted(m["args"][0] for m in broker_messages()) == sorted(r["id"] for r in body["data"])


def test_sweep_from_base_run_id(client: TestClient) -> None:
    base = client.post("/api/runs", json={"model": "task1", "hyperparameters": {"momentum": 0.9}}).json()
    body = client.post("/api/sweeps", json={"base_run_id": base["id"], "grid": {"seed": [1, 2, 3]}}).json()
    assert [r["hyperparameters"]["seed"] for r in body["data"]] == [1, 2, 3]
    assert all(r["hyperparameters"]["momentum"] == 0.9 for r in body["data"])


@pytest.mark.parametrize("body, loc, fragment", [
    ({"base": {"model": "task1"}, "grid": {"lr": [0.1] * 11, "seed": list(range(10))}}, ("body", "grid"),
     "at most 100"),
    ({"base": {"model": "task1"}, "grid": {"learning_rate": [0.1]}}, ("body", "grid", "learning_rate"),
     "unknown hyperparameter"),
    ({"base": {"model": "task1"}, "grid": {"lr": [0.1, -1]}}, ("body", "grid", "lr", 1), "greater than 0"),
    ({"base": {"model": "task1"}, "grid": {"lr": []}}, ("body", "grid", "lr"), "at least one value"),
    ({"base": {"model": "task1"}, "grid": {}}, ("body", "grid"), "at least one"),
    ({"base": {"model": "nope"}, "grid": {"lr": [0.1]}}, ("body", "base", "model"), "valid models"),
    ({"grid": {"lr": [0.1]}}, ("body",), "exactly one of base and base_run_id"),
    ({"base": {"model": "task1"}, "base_run_id": 1, "grid": {"lr": [0.1]}}, ("body",), "exactly one"),
    ({"base": {"model": "task1", "hyperparameters": {"optimizer": "adam"}}, "grid": {"nesterov": [True]}},
     ("body", "grid", "nesterov=true", "hyperparameters", "nesterov"), "momentum > 0"),
])
def test_sweep_invalid_422_and_nothing_queued(client: TestClient, broker_messages: Callable, body: dict,
                                              loc: tuple, fragment: str) -> None:
    response = client.post("/api/sweeps", json=body)
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert loc in errors, errors
    assert fragment in errors[loc]
    assert client.get("/api/runs").json()["count"] == 0 and broker_messages() == []


def test_sweep_exactly_at_cap_is_allowed(client_factory: Callable) -> None:
    client = client_factory(MAX_SWEEP_RUNS=6)
    ok = client.post("/api/sweeps", json={"base": {"model": "task1"}, "grid": {"seed": [1, 2, 3], "lr": [0.1, 0.2]}})
    assert ok.status_code == 201 and ok.json()["count"] == 6
    too_many = client.post("/api/sweeps", json={"base": {"model": "task1"}, "grid": {"seed": list(range(7))}})
    assert too_many.status_code == 422


def test_sweep_unknown_base_run_404(client: TestClient) -> None:
    assert client.post("/api/sweeps", json={"base_run_id": 99, "grid": {"lr": [0.1]}}).status_code == 404


def test_compare_runs_lists_differences_and_metrics(client: TestClient, make_run: Callable[..., Run]) -> None:
    a = make_run(name="a", hyperparameters={"lr": 0.1, "batch_size": 64}, status=RunStatus.succeeded,
                 final_metrics={"test/acc": 0.7}, best_metrics={"val/acc": 0.72}).id
    b = make_run(name="b", hyperparameters={"lr": 0.05, "batch_size": 64}, status=RunStatus.succeeded,
                 final_metrics={"test/acc": 0.75}, best_metrics={"val/acc": 0.76},
                 dataset={"kind": "imagefolder", "name": "cifar10-sample", "augment": True}).id
    body = client.get(f"/api/compare?ids={b},{a}").json()
    assert [row["name"] for row in body["runs"]] == ["b", "a"]  # the order asked for
    assert body["differing"] == ["dataset.augment", "lr"]
    assert body["metric_names"] == ["test/acc", "val/acc"]
    assert body["runs"][0]["final_metrics"] == {"test/acc": 0.75} and body["runs"][1]["hyperparameters"]["lr"] == 0.1


def test_compare_unknown_run_404(client: TestClient, make_run: Callable[..., Run]) -> None:
    response = client.get(f"/api/compare?ids={make_run().id},77,78")
    assert response.status_code == 404 and "77, 78" in response.json()["detail"]


@pytest.mark.parametrize("ids", ["", "1,x", "1;2"])
def test_compare_bad_ids_422(client: TestClient, ids: str) -> None:
    response = client.get(f"/api/compare?ids={ids}")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "ids"]


def test_compare_requires_ids(client: TestClient) -> None:
    assert client.get("/api/compare").status_code == 422


def seeded_runs(make_run: Callable[..., Run]) -> dict[str, int]:
    """Three seeds' worth of runs with known final metrics: task1 at lr 0.1 (seeds 0, 1), task1 at
    lr 0.01 (seed 0) and net2 at lr 0.1 (seed 0)."""
    def run(name: str, model: str, lr: float, seed: int, val_acc: float, test_acc: float | None) -> int:
        final = {"train/loss": 0.4, "val/acc": val_acc, **({"test/acc": test_acc} if test_acc is not None else {})}
        return make_run(name=name, model=model, hyperparameters={"lr": lr, "batch_size": 64, "seed": seed},
                        status=RunStatus.succeeded, final_metrics=final).id
    return {"high0": run("high0", "task1", 0.1, 0, 0.70, 0.68), "low": run("low", "task1", 0.01, 0, 0.60, None),
            "high1": run("high1", "task1", 0.1, 1, 0.72, 0.70), "net2": run("net2", "net2", 0.1, 0, 0.80, 0.79)}


def test_compare_group_by_lr_means_the_seeds(client: TestClient, make_run: Callable[..., Run]) -> None:
    ids = seeded_runs(make_run)
    order = [ids["high0"], ids["low"], ids["high1"]]
    body = client.get(f"/api/compare?ids={','.join(map(str, order))}&group_by=lr").json()
    assert body["group_by"] == "lr" and [row["id"] for row in body["runs"]] == order  # the runs stay as they were
    high, low = body["groups"]  # in the order of each group's first run
    assert (high["value"], high["run_ids"], high["n"]) == (0.1, [ids["high0"], ids["high1"]], 2)
    assert high["summaries"]["val/acc"] == {"mean": pytest.approx(0.71), "std": pytest.approx(0.0141421356), "n": 2}
    assert high["summaries"]["train/loss"] == {"mean": pytest.approx(0.4), "std": 0.0, "n": 2}
    # One run has no spread to estimate, and a metric no run has is no zero.
    assert (low["value"], low["run_ids"], low["n"]) == (0.01, [ids["low"]], 1)
    assert low["summaries"]["val/acc"] == {"mean": pytest.approx(0.6), "std": None, "n": 1}
    assert low["summaries"]["test/acc"] == {"mean": None, "std": None, "n": 0}
    assert set(high["summaries"]) == {"train/loss", "val/loss", "train/acc", "val/acc", "test/acc"}


def test_compare_group_by_model_splits_by_preset(client: TestClient, make_run: Callable[..., Run]) -> None:
    ids = seeded_runs(make_run)
    order = [ids["net2"], ids["high0"], ids["high1"], ids["low"]]
    body = client.get(f"/api/compare?ids={','.join(map(str, order))}&group_by=model").json()
    assert [(group["value"], group["run_ids"]) for group in body["groups"]] == [
        ("net2", [ids["net2"]]), ("task1", [ids["high0"], ids["high1"], ids["low"]])]
    task1 = body["groups"][1]["summaries"]
    assert task1["val/acc"]["mean"] == pytest.approx((0.70 + 0.72 + 0.60) / 3)
    assert task1["test/acc"] == {"mean": pytest.approx(0.69), "std": pytest.approx(0.0141421356), "n": 2}


def test_compare_group_by_model_when_every_run_shares_it(client: TestClient, make_run: Callable[..., Run]) -> None:
    ids = seeded_runs(make_run)
    body = client.get(f"/api/compare?ids={ids['high0']},{ids['high1']}&group_by=model").json()
    assert "model" not in body["differing"]  # "model" is always a choice, even as one group
    assert [(group["value"], group["n"]) for group in body["groups"]] == [("task1", 2)]


@pytest.mark.parametrize("group_by", ["batch_size", "nope", "dataset.name"])
def test_compare_group_by_unknown_setting_422(client: TestClient, make_run: Callable[..., Run], group_by: str) -> None:
    """Only the model and the settings that differ group runs: batch_size is the same for all of them."""
    ids = seeded_runs(make_run)
    response = client.get(f"/api/compare?ids={ids['high0']},{ids['low']}&group_by={group_by}")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "group_by"] and error["msg"] == "must be one of: model, lr"


@pytest.mark.parametrize("query", ["", "&group_by="])
def test_compare_without_group_by_has_no_groups(client: TestClient, make_run: Callable[..., Run], query: str) -> None:
    ids = seeded_runs(make_run)
    body = client.get(f"/api/compare?ids={ids['high0']},{ids['high1']}{query}").json()
    assert body["group_by"] is None and body["groups"] == []
