"""/report and /report/download: each study preset's latest succeeded run beside the reference numbers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlmodel import Session

from app.models import Run, RunStatus
from app.pages.templating import PLOTLY_JS
from app.services import report, visualize
from ml.data import CIFAR10_CLASSES

NET2_FINAL = {"train/loss": 0.4012, "val/loss": 0.6, "train/acc": 0.85, "val/acc": 0.79, "test/acc": 0.7853}
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _fresh_visualize_caches() -> Any:
    visualize.clear_memory_caches()  # run ids and paths repeat across the tests' databases
    yield
    visualize.clear_memory_caches()


@pytest.fixture
def client(client_factory: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The runs' image folders live under pytest's temporary folder: an allowed dataset root here."""
    return client_factory(DATASET_ROOTS=str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A task1 checkpoint trained one epoch on a 10-class folder of 4 train and 2 test PNGs per class."""
    from ml.config import DatasetSpec, TrainConfig
    from ml.data import load_splits
    from ml.trainer import train

    base = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(1)
    for name in CIFAR10_CLASSES:
        for split, count in (("train", 4), ("test", 2)):
            (base / "folder" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / "folder" / split / name / f"{i}.png")
    config = TrainConfig(epochs=1, batch_size=16, eval_every=1.0, log_every=1, early_stop_count=0)
    splits = load_splits(DatasetSpec(kind="imagefolder", path=str(base / "folder")), data_dir=base / "data",
                         seed=0, val_fraction=0.1)
    train("task1", config, splits, checkpoint_path=base / "checkpoint.pt")
    return {"checkpoint": base / "checkpoint.pt", "dataset": str(base / "folder"), "hyperparameters": asdict(config)}


def attach_checkpoint(client: Any, run_id: int, trained: dict[str, Any]) -> None:
    """Give a seeded run the tiny checkpoint and its dataset, as a worker would have left them."""
    target = client.app.state.settings.ARTIFACTS_DIR / str(run_id) / "checkpoint.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path(trained["checkpoint"]).read_bytes())
    with Session(client.app.state.engine) as session:
        run = session.get(Run, run_id)
        run.checkpoint_path = f"{run_id}/checkpoint.pt"
        run.dataset = {"kind": "imagefolder", "path": trained["dataset"]}
        run.hyperparameters = trained["hyperparameters"]
        session.commit()


def summary_cell(page: str, preset: str, metric: str) -> str:
    match = re.search(rf'<td class="num" data-preset="{preset}" data-metric="{re.escape(metric)}">(.*?)</td>', page, re.S)
    assert match, (preset, metric)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", match.group(1))).strip()


# ------------------------------------------------------------------- page ---

def test_report_without_runs_offers_to_launch_every_preset(client: Any, html: Any) -> None:
    response = client.get("/report")
    assert response.status_code == 200
    page = response.text
    buttons = [attrs for attrs in html.elements(page, "button") if attrs.get("data-launch")]
    assert [b["data-launch"] for b in buttons] == list(report.STUDY_PRESETS)
    assert all("data-needs-write" in b for b in buttons)  # disabled for a read-only visitor
    assert html.json_block(page, "report-data") == {"standalone": False, "visuals_run_id": None}
    # The references are there even before any run: the study's task1 test accuracy, net2's JPEG one.
    assert "73.97 %" in summary_cell(page, "task1", "test/acc")
    assert "78.20 %" in summary_cell(page, "net2", "test/acc")
    assert "No preset run with a checkpoint yet" in page
    scripts = [attrs.get("src") or "" for attrs in html.elements(page, "script")]
    assert any("/static/report.js" in src for src in scripts) and any("/static/app.js" in src for src in scripts)


def test_report_puts_the_latest_succeeded_run_beside_the_references(client: Any, seed: Any) -> None:
    seed.run(RunStatus.succeeded, model="net2", name="older net2", points=40,
             final_metrics={**NET2_FINAL, "test/acc": 0.5})
    latest = seed.run(RunStatus.succeeded, model="net2", name="latest net2", points=40, final_metrics=NET2_FINAL)
    seed.run(RunStatus.failed, model="net2", name="failed net2", points=5)
    page = client.get("/report").text

    assert f"#{latest} latest net2" in page and "failed net2" not in page
    # The older run shows only in the list of runs left out of the mean over seeds: same seed, older.
    assert page.count("older net2") == 1 and "older net2</a> (net2): not comparable: seed 0 is already counted" in page
    # 78.53 % against the study's 80.19 % (−1.66 points) and the JPEG recipe's 78.20 % (+0.33 points).
    cell = summary_cell(page, "net2", "test/acc")
    assert cell.startswith("78.53 %")
    assert "study 80.19 % (-1.66 pts)" in cell and "JPEG recipe 78.20 % (+0.33 pts)" in cell
    # Losses differ plainly: 0.4012 − 0.3819 and 0.4012 − 0.454.
    assert "(+0.0193)" in summary_cell(page, "net2", "train/loss")
    assert "(-0.0528)" in summary_cell(page, "net2", "train/loss")
    # The other presets still offer their launch button.
    assert re.findall(r'data-launch="(\w+)"', page) == ["task1", "net1", "resnet18"]


def test_report_draws_curves_per_run_and_the_loss_overlay(client: Any, seed: Any, html: Any) -> None:
    task1 = seed.run(RunStatus.succeeded, model="task1", points=30)
    net2 = seed.run(RunStatus.succeeded, model="net2", points=30, final_metrics=NET2_FINAL)
    page = client.get("/report").text
    for preset in ("task1", "net2"):
        loss = html.json_block(page, f"figure-{preset}-loss")
        assert {trace["name"] for trace in loss["data"]} == {"train/loss", "val/loss"}
        assert html.json_block(page, f"figure-{preset}-acc")["data"][0]["name"] == "val/acc"
    overlay = html.json_block(page, "figure-losses")
    assert [trace["name"] for trace in overlay["data"]] == ["task1 train/loss", "task1 val/loss",
                                                           "net2 train/loss", "net2 val/loss"]
    dashes = {trace["name"]: trace["line"]["dash"] for trace in overlay["data"]}
    assert dashes["net2 train/loss"] == "dash" and dashes["net2 val/loss"] == "solid"
    assert f'href="/runs/{task1}"' in page and f'href="/runs/{net2}"' in page
    assert "No preset run with a checkpoint yet" in page  # seeded runs have no checkpoint


def test_report_visualises_the_best_run_when_there_is_no_resnet18(client: Any, seed: Any, html: Any,
                                                                  tiny_checkpoint: dict[str, Any]) -> None:
    weaker = seed.run(RunStatus.succeeded, model="task1", points=10)  # test acc 70.11 %
    best = seed.run(RunStatus.succeeded, model="net2", points=10, final_metrics=NET2_FINAL)
    for run_id in (weaker, best):
        attach_checkpoint(client, run_id, tiny_checkpoint)
    page = client.get("/report").text
    assert html.json_block(page, "report-data") == {"standalone": False, "visuals_run_id": best}
    assert f"What net2 run #{best} has learnt" in page and "the best test accuracy" in page


# --------------------------------------------------------------- download ---

def test_download_is_one_standalone_file(client: Any, seed: Any, html: Any, tiny_checkpoint: dict[str, Any]) -> None:
    run_id = seed.run(RunStatus.succeeded, model="task1", points=30)
    attach_checkpoint(client, run_id, tiny_checkpoint)
    response = client.get("/report/download")
    assert response.status_code == 200
    assert re.fullmatch(r'attachment; filename="trainboard-report-\d{8}-\d{4}\.html"',
                        response.headers["content-disposition"])
    page = response.text

    # Nothing is fetched: no <link>, no external or server-relative src/href, every picture a data: URI.
    tags = html.elements(page)
    assert not html.elements(page, "link")
    for attrs in tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert not EXTERNAL.match(value) and not value.startswith("/"), (name, value)
    assert 'src="http' not in page and "<link" not in page
    images = [attrs["src"] for attrs in html.elements(page, "img")]
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert all(not attrs.get("src") for attrs in html.elements(page, "script"))  # every script is inline

    # Plotly's own code, the dashboard's CSS and the figures are inside the file.
    assert PLOTLY_JS.read_text(encoding="utf-8")[:2000] in page
    assert "--accent:" in page and ".viz-frame" in page
    assert html.json_block(page, "report-data")["standalone"] is True
    confusion = html.json_block(page, "figure-report-heatmap")["data"][0]
    assert confusion["type"] == "heatmap" and confusion["x"] == CIFAR10_CLASSES
    assert np.array(confusion["z"]).sum() == 2 * len(CIFAR10_CLASSES)
    assert html.json_block(page, "figure-task1-loss")["data"]
    assert not [b for b in html.elements(page, "button") if "data-launch" in b]  # a saved file cannot launch runs


def test_download_without_runs_still_works(client: Any, html: Any) -> None:
    response = client.get("/report/download")
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    assert not html.elements(response.text, "link") and not html.elements(response.text, "img")


def test_inline_script_cannot_close_its_element() -> None:
    from app.pages.report import inline_script

    assert str(inline_script('var s = "</script><script>alert(1)</SCRIPT>";')) == \
        'var s = "<\\/script><script>alert(1)<\\/SCRIPT>";'


# ------------------------------------------------------------ over seeds ---

def seeds_cell(page: str, preset: str, metric: str) -> str:
    match = re.search(rf'<td class="num" data-seeds-preset="{preset}" data-metric="{re.escape(metric)}">(.*?)</td>',
                      page, re.S)
    assert match, (preset, metric)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", match.group(1))).strip()


def test_report_shows_mean_std_over_seeds_and_lists_the_others(client: Any, seed: Any, html: Any) -> None:
    counted = [seed.run("succeeded", model="net2", name=f"net2 seed {s}", hyperparameters={"seed": s},
                        final_metrics={**NET2_FINAL, "test/acc": acc}) for s, acc in ((0, 0.78), (1, 0.79), (2, 0.80))]
    short = seed.run("succeeded", model="net2", name="short", hyperparameters={"seed": 7, "epochs": 2},
                     final_metrics=NET2_FINAL)
    page = client.get("/report").text
    cell = seeds_cell(page, "net2", "test/acc")
    assert cell.startswith("79.00 ± 1.00 % (n=3)"), cell
    assert "JPEG recipe 78.20 % (+0.80 pts)" in cell and "study 80.19 % (-1.19 pts)" in cell
    assert seeds_cell(page, "net1", "test/acc").startswith("–")  # no net1 runs: no mean, no n
    assert re.search(rf'<li data-run-id="{short}">.*not comparable: epochs 2, the preset&#39;s is 10</li>', page)
    assert all(f'data-run-id="{run_id}"' not in page for run_id in counted)
    assert f'href="/compare?ids={",".join(map(str, counted))}&amp;group_by=model"' in page
    form = html.elements(page, "form")
    assert any(attrs.get("id") == "study-form" for attrs in form)
    boxes = [attrs["value"] for attrs in html.elements(page, "input") if attrs.get("name") == "presets"]
    assert boxes == list(report.STUDY_PRESETS)


def test_report_seeds_for_another_dataset_by_query(client: Any, seed: Any) -> None:
    seed.run("succeeded", model="task1", hyperparameters={"seed": 1}, final_metrics={"test/acc": 0.7})
    page = client.get("/report", params={"dataset": "imagefolder /elsewhere"}).text
    assert seeds_cell(page, "task1", "test/acc").startswith("–")
    assert "another data set: cifar10-sample" in page  # the launch default here: no CIFAR-10
    assert client.get("/report", params={"dataset": "x" * 3000}).status_code == 422


def jpeg_reference_table() -> dict[str, dict[str, float]]:
    """docs/benchmarks.md's "JPEG reference" rows, keyed like report.RECIPE_ON_JPEG.metrics."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    section = docs.split("### JPEG reference", 1)[1].split("\n#", 1)[0]
    columns = ("train/acc", "val/acc", "test/acc", "train/loss", "val/loss")
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[2].endswith("%"):
            rows[cells[0]] = {name: float(cell.rstrip("%")) / (100 if cell.endswith("%") else 1)
                              for name, cell in zip(columns, cells[2:])}
    return rows


def test_report_cites_the_jpeg_reference_in_the_projects_docs(client: Any) -> None:
    page = client.get("/report").text
    # Only the project's own docs are cited: no file outside the repository (a path going up).
    assert "docs/benchmarks.md" in page and "../" not in page and "README.md" not in page
    table = jpeg_reference_table()
    # The figures the report compares against are the ones the docs print (net2: the study's Linear-only init).
    rows = {"task1": table["task1"], "net1": table["net1, Xavier on all layers"],
            "net2": table["net2, Xavier on Linear only (the study's code)"]}
    for preset, metrics in report.RECIPE_ON_JPEG.metrics.items():
        assert metrics == pytest.approx(rows[preset]), preset
