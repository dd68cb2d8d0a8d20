"""POST /api/study (the study's presets × seeds as one group) and the report's mean ± std over seeds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.models import Run, RunStatus
from app.services import report
from app.services.catalog import preset_hyperparameters
from app.services.stats import mean_band, summarize


def test_study_queues_presets_times_seeds_as_one_group(client: TestClient, broker_messages: Callable) -> None:
    response = client.post("/api/study", json={"dataset": {"name": "cifar10-sample"}, "presets": ["net1", "net2"], "seeds": 2})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["count"] == 4 and body["group"].startswith("study:")
    assert [(r["model"], r["hyperparameters"]["seed"]) for r in body["data"]] == [
        ("net1", 0), ("net1", 1), ("net2", 0), ("net2", 1)]
    assert all(r["tags"] == [body["group"]] for r in body["data"])
    for run in body["data"]:  # each run keeps its preset's recipe: only the seed is set
        assert {**run["hyperparameters"], "seed": 0} == {**preset_hyperparameters(run["model"]), "seed": 0}
    assert sorted(m["args"][0] for m in broker_messages()) == sorted(r["id"] for r in body["data"])
    assert client.get("/api/runs", params={"tag": body["group"]}).json()["count"] == 4


def test_study_defaults_to_every_preset_with_three_seeds(client: TestClient) -> None:
    body = client.post("/api/study", json={}).json()
    assert body["count"] == len(report.STUDY_PRESETS) * 3
    assert {r["model"] for r in body["data"]} == set(report.STUDY_PRESETS)


@pytest.mark.parametrize("body, loc, fragment", [
    ({"presets": ["net1", "custom"]}, ("body", "presets", 1), "not a study preset"),
    ({"presets": []}, ("body", "presets"), "at least one preset"),
    ({"dataset": {"kind": "cifar10", "limit_train": 500}}, ("body", "dataset", "limit_train"), "whole data set"),
    ({"dataset": {"kind": "cifar10", "augment": True}}, ("body", "dataset", "augment"), "without augmentation"),
    ({"dataset": {"kind": "imagefolder", "path": "nowhere"}}, ("body", "dataset", "path"), "not found"),
    ({"seeds": 0}, ("body", "seeds"), "greater than or equal to 1"),
    ({"seeds": 6}, ("body", "seeds"), "at most 20"),  # 4 presets × 6 > MAX_SWEEP_RUNS=20
    ({"extra": 1}, ("body", "extra"), "Extra inputs"),
])
def test_study_invalid_422_and_nothing_queued(client_factory: Callable, broker_messages: Callable, body: dict,
                                              loc: tuple, fragment: str) -> None:
    client = client_factory(MAX_SWEEP_RUNS=20)
    response = client.post("/api/study", json=body)
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert loc in errors and fragment in errors[loc], errors
    assert client.get("/api/runs").json()["count"] == 0 and broker_messages() == []


def test_study_needs_the_token_when_one_is_set(client_factory: Callable) -> None:
    token = "study-token-0123456789"
    client = client_factory(TRAINBOARD_API_TOKEN=token)
    assert client.post("/api/study", json={}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).json()["count"] == 0


# ------------------------------------------------------- mean ± std over seeds ---

def test_stats_summarize_uses_the_sample_std_and_skips_missing() -> None:
    summary = summarize([0.7, 0.8, 0.9, None, float("nan")])
    assert (summary.mean, summary.std, summary.n) == (pytest.approx(0.8), pytest.approx(0.1), 3)
    assert summarize([0.5]) == report.Summary(0.5, None, 1)
    assert summarize([]) == report.Summary(None, None, 0)


def test_stats_mean_band_aligns_on_epochs_and_counts_each_point() -> None:
    band = mean_band([([0.5, 1.0, 1.5], [1.0, 2.0, 3.0]), ([0.5, 1.0], [3.0, 4.0])])  # the second stopped early
    assert band.x == [0.5, 1.0, 1.5] and band.mean == [2.0, 3.0, 3.0] and band.n == [2, 2, 1]
    assert band.std == pytest.approx([2 ** 0.5, 2 ** 0.5, 0.0])


def _succeeded(make_run: Callable[..., Run], model: str, seed: int, test_acc: float, *,
               dataset: dict | None = None, **hyperparameters: object) -> Run:
    return make_run(model=model, status=RunStatus.succeeded, name=f"{model}-{seed}",
                    dataset=dataset or {"kind": "cifar10"},
                    hyperparameters={**preset_hyperparameters(model), "seed": seed, **hyperparameters},
                    final_metrics={"test/acc": test_acc, "val/loss": 0.6})


def test_seed_study_counts_only_comparable_runs(session: Session, make_run: Callable[..., Run]) -> None:
    elsewhere = _succeeded(make_run, "net1", 0, 0.7, dataset={"kind": "imagefolder", "path": "/data/jpeg"})
    counted = [_succeeded(make_run, "net2", seed, acc) for seed, acc in ((0, 0.78), (1, 0.79), (2, 0.80))]
    subset = _succeeded(make_run, "net2", 3, 0.5, dataset={"kind": "cifar10", "limit_train": 500})
    other_lr = _succeeded(make_run, "net2", 4, 0.6, lr=0.05)
    same_seed = _succeeded(make_run, "net2", 1, 0.7)  # newer: it is counted, the first seed-1 run is not

    study = report.seed_study(session)
    assert study.dataset == "cifar10"  # the latest run that follows its recipe
    assert set(study.datasets) == {"cifar10", "imagefolder /data/jpeg"}
    net2 = next(result for result in study.results if result.preset == "net2")
    assert [run.id for run in net2.runs] == [counted[0].id, same_seed.id, counted[2].id]
    summary = net2.summaries["test/acc"]
    assert summary.n == 3 and summary.mean == pytest.approx(0.76) and summary.std == pytest.approx(0.0529, abs=1e-4)
    row = next(row for row in net2.rows if row.metric == "test/acc")
    assert row.comparisons["jpeg"].difference == pytest.approx(0.76 - 0.782)
    reasons = {item.run.id: " ".join(item.reasons) for item in study.not_comparable}
    assert "not the full training set" in reasons[subset.id]
    assert "lr 0.05, the preset's is 0.1" in reasons[other_lr.id]
    assert f"seed 1 is already counted (run #{same_seed.id}" in reasons[counted[1].id]
    assert "another data set: imagefolder /data/jpeg" in reasons[elsewhere.id]
    assert set(reasons) == {subset.id, other_lr.id, counted[1].id, elsewhere.id}
    assert study.not_comparable_total == 4

    jpeg = report.seed_study(session, "imagefolder /data/jpeg")
    assert [len(result.runs) for result in jpeg.results] == [0, 1, 0, 0]


def test_seed_study_without_comparable_runs_is_empty(session: Session, make_run: Callable[..., Run]) -> None:
    study = report.seed_study(session)
    assert study.dataset is None and study.not_comparable == []
    assert all(not result.runs and result.summaries["test/acc"].n == 0 for result in study.results)
    subset = _succeeded(make_run, "task1", 0, 0.5, dataset={"kind": "cifar10", "limit_train": 100})
    session.rollback()  # a new snapshot, as the next request's session would have
    study = report.seed_study(session)
    assert study.dataset is None  # no data set to speak of: the only reason is the subset
    assert [(item.run.id, item.reasons) for item in study.not_comparable] == [
        (subset.id, ["trained on at most 100 images, not the full training set"])]


def test_study_then_report_counts_the_group_once_it_succeeds(client: TestClient, tmp_path: Path) -> None:
    """The runs a study queues are comparable as they are: finished, they are what the report counts."""
    body = client.post("/api/study", json={"presets": ["task1"], "seeds": 2}).json()
    with Session(client.app.state.engine) as session:
        for index, created in enumerate(body["data"]):
            run = session.get(Run, created["id"])
            run.status, run.final_metrics = RunStatus.succeeded, {"test/acc": 0.70 + index / 100}
        session.commit()
        task1 = report.seed_study(session).results[0]
    assert [run.id for run in task1.runs] == [r["id"] for r in body["data"]]
    assert task1.summaries["test/acc"].mean == pytest.approx(0.705)
