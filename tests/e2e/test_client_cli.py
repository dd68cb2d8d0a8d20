"""trainboard.client and `trainboard runs …` against a live app (uvicorn) and a real Celery worker.

Embedded stack (SQLite + Kombu's filesystem broker), tiny task1 runs on 500 images.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.cli import main as trainboard_main
from trainboard import ApiError, Client

pytestmark = pytest.mark.slow

TINY = {"epochs": 1, "batch_size": 64, "eval_every": 0.5, "log_every": 2, "early_stop_count": 0}
FINAL_METRICS = {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"}
RUN_TIMEOUT_S = 180
TOKEN = "cli-token-0123456789"


def dataset(root: Path) -> dict[str, Any]:
    return {"kind": "imagefolder", "path": str(root), "limit_train": 500}


def start(stack: Any, **web_env: str) -> None:
    stack.start_web(**web_env)
    stack.start_worker()
    stack.wait_healthy(lambda health: health["workers"] >= 1)


def point_count(stack: Any, run_id: int) -> int:
    return len(stack.point_ids(run_id))


def comparison_ids(comparison: dict[str, Any]) -> list[int]:
    return [row["id"] for row in comparison["runs"]]


def test_client_launch_watch_compare_download_cancel_delete(embedded_stack: Any, cifar_subset: Path,
                                                             tmp_path: Path) -> None:
    stack = embedded_stack
    start(stack)
    with Client(stack.base_url, timeout_s=120) as client:
        assert "task1" in {model["name"] for model in client.models()}
        with pytest.raises(ApiError) as bad:
            client.launch("task1", dataset=dataset(cifar_subset), hyperparameters={"lr": -1})
        assert bad.value.status_code == 422
        assert any(error.field == "hyperparameters.lr" for error in bad.value.field_errors), bad.value.field_errors

        run = client.launch("task1", dataset=dataset(cifar_subset), hyperparameters=TINY, name="client-1",
                            tags=["client"])
        assert (run.status, run.name, run.tags) == ("queued", "client-1", ["client"])
        events = list(client.watch(run.id))

        assert events[-1].event == "end" and events[-1].data["status"] == "succeeded", stack.logs()
        streamed = sum(len(series["step"]) for e in events if e.event == "metrics" for series in e.data["series"])
        assert streamed == point_count(stack, run.id)  # every point once, none twice
        done = client.get_run(run.id)
        assert done.finished and set(done.final_metrics) == FINAL_METRICS and done.worker_host

        metrics = client.metrics(run.id)
        assert sum(len(series.step) for series in metrics.series.values()) == streamed
        val_acc = metrics["val/acc"]
        assert len(val_acc.step) == len(val_acc.value) == 3 and all(0 <= v <= 1 for v in val_acc.value)
        assert isinstance(val_acc.value, list) and val_acc.value[-1] == pytest.approx(done.final_metrics["val/acc"])

        saved = client.download_checkpoint(run.id, tmp_path)
        assert saved == tmp_path / f"run-{run.id}-checkpoint.pt" and saved.stat().st_size > 100_000
        assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left beside it

        swept = client.sweep({"lr": [0.02, 0.01]}, base_run_id=run.id)
        assert len(swept) == 2
        finished = [client.wait(r.id, timeout_s=RUN_TIMEOUT_S, poll_s=0.5) for r in swept]
        assert [r.status for r in finished] == ["succeeded", "succeeded"], stack.logs()
        comparison = client.compare([run.id, *(r.id for r in swept)])
        assert comparison["differing"] == ["lr"]
        assert [row["hyperparameters"]["lr"] for row in comparison["runs"]] == [0.05, 0.02, 0.01]
        grouped = client.compare([run.id, *(r.id for r in swept)], group_by="model")
        assert [(g["value"], g["run_ids"], g["n"]) for g in grouped["groups"]] == [("task1", comparison_ids(comparison), 3)]
        mean_val_acc = sum(row["final_metrics"]["val/acc"] for row in comparison["runs"]) / 3
        assert grouped["groups"][0]["summaries"]["val/acc"]["mean"] == pytest.approx(mean_val_acc)

        listed = client.list_runs(status="succeeded", tag="client")
        assert listed.count == 3 and {r.id for r in listed.runs} == {run.id, *(r.id for r in swept)}

        long_run = client.clone(run.id, name="to cancel", hyperparameters={"epochs": 30})
        assert long_run.hyperparameters["epochs"] == 30 and long_run.raw["cloned_from"] == run.id
        client.cancel(long_run.id)
        assert client.wait(long_run.id, timeout_s=RUN_TIMEOUT_S, poll_s=0.5).status == "cancelled"
        client.delete(long_run.id)
        with pytest.raises(ApiError) as missing:
            client.get_run(long_run.id)
        assert missing.value.status_code == 404 and "not found" in missing.value.detail


def test_client_watch_reconnects_after_server_restart_without_losing_points(embedded_stack: Any,
                                                                             cifar_subset: Path) -> None:
    stack = embedded_stack
    start(stack)
    port = stack.base_url.rsplit(":", 1)[1]
    with Client(stack.base_url, timeout_s=120) as client:
        run = client.launch("task1", dataset=dataset(cifar_subset), hyperparameters={**TINY, "epochs": 4})
        restarted = False
        streamed = 0
        ids: list[int] = []
        for event in client.watch(run.id, max_reconnects=300, reconnect_delay_s=0.25):
            if event.event == "metrics":
                streamed += sum(len(series["step"]) for series in event.data["series"])
                ids.append(int(event.id))
                if not restarted:
                    # Stop the web app mid-run and bring up a new one on the same port: the stream breaks,
                    # and the client must resume after the last point it saw.
                    restarted = True
                    stack.processes[0].stop()
                    stack.start("web-again", [sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                                              "127.0.0.1", "--port", port])
        assert restarted and event.event == "end" and event.data["status"] == "succeeded", stack.logs()
        assert ids == sorted(set(ids))  # Last-Event-ID: the second stream started after the first one's last id
        assert streamed == point_count(stack, run.id)


def run_cli(*args: str) -> int:
    return trainboard_main(["runs", *args])


def test_cli_launch_watch_list_compare_export_cancel(embedded_stack: Any, cifar_subset: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    stack = embedded_stack
    start(stack, TRAINBOARD_API_TOKEN=TOKEN)
    monkeypatch.setenv("TRAINBOARD_URL", stack.base_url)
    monkeypatch.setenv("TRAINBOARD_API_TOKEN", TOKEN)
    tiny = [f"--set={key}={json.dumps(value)}" for key, value in TINY.items()]
    data = ["--dataset", f"imagefolder:{cifar_subset}", "--set", "dataset.limit_train=500"]

    assert run_cli("--token", "wrong", "launch", "--preset", "task1", *data) == 4
    assert "401" in capsys.readouterr().err
    assert run_cli("launch", "--preset", "task1", *data, "--set", "lr=-1") == 4
    assert "hyperparameters.lr" in capsys.readouterr().err

    assert run_cli("launch", "--preset", "task1", *data, *tiny, "--set", "lr=0.05", "--watch") == 0
    out = capsys.readouterr()
    first = int(out.out.split()[1])
    assert f"run {first} succeeded" in out.out and "test/acc" in out.out, out
    assert "started" in out.err  # the history lines under the progress bar

    assert run_cli("launch", "--preset", "task1", *data, *tiny, "--set", "lr=0.02", "--name", "second") == 0
    second = int(capsys.readouterr().out.split()[1])
    assert run_cli("watch", str(second)) == 0
    assert f"run {second} succeeded" in capsys.readouterr().out

    assert run_cli("list") == 0
    listing = capsys.readouterr().out
    assert "second" in listing and "2 of 2 runs" in listing

    assert run_cli("compare", str(first), str(second)) == 0
    table = capsys.readouterr().out.splitlines()
    lr_row = next(line for line in table if line.startswith("lr "))
    assert "0.05" in lr_row and "0.02" in lr_row
    assert any(line.startswith("test/acc") and line.count("%") == 2 for line in table)
    assert run_cli("compare", str(first), str(second), "--group-by", "lr") == 0
    grouped = capsys.readouterr().out
    assert "mean ± std (n) by lr" in grouped and "(1)" in grouped

    csv_path = tmp_path / "metrics.csv"
    assert run_cli("export", str(first), "--format", "csv", "-o", str(csv_path)) == 0
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["name", "step", "epoch", "time", "value"]
    assert len(rows) - 1 == point_count(stack, first)
    assert run_cli("export", str(first), "--format", "json") == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["run"]["id"] == first and len(exported["metrics"]["val/acc"]["value"]) == 3

    assert run_cli("launch", "--preset", "task1", *data, *tiny, "--set", "epochs=30") == 0
    long_run = int(capsys.readouterr().out.split()[1])
    assert run_cli("cancel", str(long_run)) == 0
    assert f"run {long_run}:" in capsys.readouterr().out
    assert run_cli("watch", str(long_run)) == 3  # the exit code follows the run's status
    assert f"run {long_run} cancelled" in capsys.readouterr().out

    # A run that fails in the worker: the web counts the images, only the worker decodes the corrupt one. Exit 1.
    corrupt = tmp_path / "corrupt"
    shutil.copytree(cifar_subset, corrupt)
    next((corrupt / "train").rglob("*.jpg")).write_bytes(b"not a jpeg")
    assert run_cli("launch", "--preset", "task1", "--dataset", f"imagefolder:{corrupt}", *tiny, "--watch") == 1
    out = capsys.readouterr().out
    failed = int(out.split()[1])
    assert f"run {failed} failed" in out

    assert run_cli("compare", str(first), str(failed)) == 0
    path_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dataset.path"))
    assert path_row.split()[1:] == [str(cifar_subset), str(corrupt)]


def test_cli_entry_point_reads_url_from_environment(embedded_stack: Any) -> None:
    stack = embedded_stack
    stack.start_web()
    env = {**stack.env, "TRAINBOARD_URL": stack.base_url}
    listed = subprocess.run([sys.executable, "-m", "app.cli", "runs", "list"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "0 of 0 runs" in listed.stdout
    unreachable = subprocess.run([sys.executable, "-m", "app.cli", "runs", "--url", "http://127.0.0.1:9",
                                  "list"], env=env, capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 4 and "cannot reach Trainboard" in unreachable.stderr
