"""/runs/{id}/visualize and /api/runs/{id}/visualize/*: filters, feature maps, uploads, confusion matrix.

A real (tiny) checkpoint: task1 trained for a few steps on a synthetic image
folder of 10 classes (6 train and 3 test PNGs each), once per session, then
copied into each test's ARTIFACTS_DIR/<run id>/checkpoint.pt.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlmodel import Session

from app.core.db import utcnow
from app.models import Run, RunStatus
from app.services import visualize, viz_cache, viz_data
from ml.data import CIFAR10_CLASSES
from ml.visualize import MAX_UPLOAD_BYTES, grid_shape

TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 3
TEST_IMAGES = TEST_PER_CLASS * len(CIFAR10_CLASSES)
TINY_TRAINING = {"epochs": 1, "batch_size": 16, "eval_every": 1.0, "log_every": 1, "early_stop_count": 0}


# ---------------------------------------------------------------- fixtures ---

def png_bytes(height: int = 40, width: int = 56, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def make_image_folder(root: Path) -> Path:
    """<root>/{train,test}/<class>/*.png: each class a noisy tint of its own colour, so the model can learn."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CIFAR10_CLASSES):
        colour = np.array([(label * 97) % 256, (label * 53) % 256, (label * 181) % 256])
        for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                noise = rng.integers(-40, 40, (32, 32, 3))
                Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"dataset": image folder, "checkpoint": a task1 checkpoint trained on it, "hyperparameters"}."""
    from ml.config import DatasetSpec, TrainConfig
    from ml.data import load_splits
    from ml.trainer import train

    base = tmp_path_factory.mktemp("visualize")
    dataset = make_image_folder(base / "folder")
    config = TrainConfig(**TINY_TRAINING)
    splits = load_splits(DatasetSpec(kind="imagefolder", path=str(dataset)), data_dir=base / "data",
                         seed=config.seed, val_fraction=config.val_fraction)
    checkpoint = base / "checkpoint.pt"
    result = train("task1", config, splits, checkpoint_path=checkpoint)
    assert result.checkpoint == checkpoint
    return {"dataset": dataset, "checkpoint": checkpoint, "hyperparameters": asdict(config)}


@pytest.fixture
def client(client_factory: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    visualize.clear_memory_caches()  # run ids repeat across the tests' databases
    # The runs' image folders live under pytest's temporary folder: an allowed dataset root here.
    yield client_factory(DATASET_ROOTS=str(tmp_path_factory.getbasetemp()))
    visualize.clear_memory_caches()


def insert_run(client: Any, checkpoint: Path | None = None, **fields: Any) -> Run:
    """A run row; with `checkpoint`, a copy of it at ARTIFACTS_DIR/<id>/checkpoint.pt, as the worker leaves it."""
    values: dict[str, Any] = {"name": "viz", "model": "task1", "dataset": {"kind": "cifar10"},
                              "hyperparameters": dict(TINY_TRAINING), "status": RunStatus.succeeded,
                              "created_at": utcnow(), "finished_at": utcnow()}
    values.update(fields)
    with Session(client.app.state.engine) as session:
        run = Run(**values)
        session.add(run)
        session.flush()  # the id names the artifacts folder
        if checkpoint is not None:
            target = client.app.state.settings.ARTIFACTS_DIR / str(run.id) / "checkpoint.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(checkpoint, target)
            run.checkpoint_path = f"{run.id}/checkpoint.pt"  # relative to ARTIFACTS_DIR, like the worker's
        session.commit()
        session.refresh(run)
        session.expunge(run)
    return run


@pytest.fixture
def run_with_checkpoint(client: Any, trained: dict[str, Any]) -> Run:
    """A succeeded task1 run on the synthetic folder, with its checkpoint."""
    return insert_run(client, trained["checkpoint"], dataset={"kind": "imagefolder", "path": str(trained["dataset"])},
                      hyperparameters=trained["hyperparameters"])


def api(run: Run, path: str = "") -> str:
    return f"/api/runs/{run.id}/visualize{path}"


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def decode_data_uri(uri: str) -> Image.Image:
    import base64

    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return decode_png(base64.b64decode(uri[len(prefix):]))


def grid_side(count: int, tile: int, pad: int = 1) -> tuple[int, int]:
    """(width, height) of a grid of `count` square tiles, as ml.visualize lays it out."""
    rows, cols = grid_shape(count)
    return cols * (tile + pad) + pad, rows * (tile + pad) + pad


def upload(client: Any, run: Run, data: bytes, filename: str = "image.png",
           content_type: str = "image/png") -> Any:
    return client.post(api(run, "/activations"), files={"file": (filename, data, content_type)})


# --------------------------------------------------------------- the API ---

def test_info_lists_classes_test_counts_and_layers(client: Any, run_with_checkpoint: Run) -> None:
    response = client.get(api(run_with_checkpoint))
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["classes"] == CIFAR10_CLASSES
    assert info["test_images_per_class"] == [TEST_PER_CLASS] * 10
    assert info["model"] == "task1" and info["checkpoint_step"] > 0
    assert "Conv2d" in info["first_conv"] and "ReLU" in info["first_layer"] and "ReLU" in info["last_layer"]


def test_filter_grid_png_has_one_tile_per_first_layer_filter(client: Any, run_with_checkpoint: Run) -> None:
    response = client.get(api(run_with_checkpoint, "/filters.png"))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = decode_png(response.content)
    # task1's first conv: 32 filters of 5×5, drawn ×4 with 1 px gaps.
    assert image.size == grid_side(32, 5 * 4) and image.mode == "RGB"


def test_activations_of_a_test_image_by_class_and_index(client: Any, run_with_checkpoint: Run) -> None:
    response = client.get(api(run_with_checkpoint, "/activations"), params={"class_name": "cat", "index": 2})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["source"], result["class_name"], result["index"]) == ("test", "cat", 2)
    assert decode_data_uri(result["input"]).size == (128, 128)
    # task1: the first conv's ReLU gives 32 maps of 32×32 (×2), the last conv's 128 maps of 8×8 (×4).
    assert (result["first"]["channels"], result["first"]["height"]) == (32, 32)
    assert decode_data_uri(result["first"]["image"]).size == grid_side(32, 64)
    assert (result["last"]["channels"], result["last"]["height"]) == (128, 8)
    assert decode_data_uri(result["last"]["image"]).size == grid_side(128, 32)
    assert result["predicted"] == result["top"][0]["name"] and len(result["top"]) == 3
    assert result["predicted"] in CIFAR10_CLASSES

    png = client.get(api(run_with_checkpoint, "/activations/last.png"), params={"class_name": "cat", "index": 2})
    assert png.status_code == 200 and decode_png(png.content).size == grid_side(128, 32)


@pytest.mark.parametrize("params, field", [
    ({"class_name": "cat", "index": TEST_PER_CLASS}, "index"),
    ({"class_name": "unicorn", "index": 0}, "class_name"),
    ({"class_name": "cat", "index": -1}, "index"),
])
def test_activations_of_a_missing_test_image_name_the_valid_range(client: Any, run_with_checkpoint: Run,
                                                                   params: dict[str, Any], field: str) -> None:
    response = client.get(api(run_with_checkpoint, "/activations"), params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


def test_activations_of_an_upload(client: Any, run_with_checkpoint: Run) -> None:
    response = upload(client, run_with_checkpoint, png_bytes(300, 200))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["source"] == "upload" and result["class_name"] is None
    assert decode_data_uri(result["input"]).size == (128, 128)  # centre-cropped and resized to 32×32
    assert result["first"]["channels"] == 32 and result["last"]["channels"] == 128


def test_upload_is_never_written_to_disk(client: Any, run_with_checkpoint: Run) -> None:
    artifacts = client.app.state.settings.ARTIFACTS_DIR
    before = {p for p in artifacts.rglob("*")}
    assert upload(client, run_with_checkpoint, png_bytes(), filename="../../evil.png").status_code == 200
    assert {p for p in artifacts.rglob("*")} == before


@pytest.mark.parametrize("data, filename, status, message", [
    (b"just some text, not an image\n", "notes.png", 415, "not a PNG, JPEG or WebP"),
    (png_bytes(fmt="GIF"), "animation.gif", 415, "not a PNG, JPEG or WebP"),
    (png_bytes()[:150], "truncated.png", 422, "truncated or corrupt"),
    (b"", "empty.png", 422, "empty"),
])
def test_upload_rejections_carry_a_message(client: Any, run_with_checkpoint: Run, data: bytes, filename: str,
                                           status: int, message: str) -> None:
    response = upload(client, run_with_checkpoint, data, filename=filename)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_upload_over_5_mb_is_refused_after_reading_one_byte_too_many(client: Any, run_with_checkpoint: Run) -> None:
    # Within the multipart allowance, so the declared length passes and the read decides.
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD_BYTES - 7)
    response = upload(client, run_with_checkpoint, data)
    assert response.status_code == 413 and "5 MB" in response.json()["detail"]


def test_upload_with_a_huge_declared_length_is_refused_unread(client: Any, run_with_checkpoint: Run) -> None:
    response = upload(client, run_with_checkpoint, b"\x89PNG\r\n\x1a\n" + bytes(6 * 2**20))
    assert response.status_code == 413


def test_upload_decompression_bomb_is_refused(client: Any, run_with_checkpoint: Run,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A small limit stands in for a real bomb: 100×100 px is far over twice 1,000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    response = upload(client, run_with_checkpoint, png_bytes(100, 100))
    assert response.status_code == 422 and "too many pixels" in response.json()["detail"]


def test_upload_without_a_file_is_refused(client: Any, run_with_checkpoint: Run) -> None:
    response = client.post(api(run_with_checkpoint, "/activations"), data={"other": "x"})
    assert response.status_code == 422 and "Choose an image" in response.json()["detail"]


def test_upload_needs_the_token_when_one_is_set(client_factory: Callable[..., Any], trained: dict[str, Any]) -> None:
    client = client_factory(TRAINBOARD_API_TOKEN="secret-token-0123456789")
    run = insert_run(client)
    assert upload(client, run, png_bytes()).status_code == 401


def test_confusion_matrix_counts_every_test_image(client: Any, run_with_checkpoint: Run) -> None:
    response = client.get(api(run_with_checkpoint, "/confusion"))
    assert response.status_code == 200, response.text
    result = response.json()
    matrix = np.array(result["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == result["total"] == TEST_IMAGES
    assert matrix.sum(axis=1).tolist() == [TEST_PER_CLASS] * 10
    assert result["per_class_accuracy"] == pytest.approx((np.diag(matrix) / TEST_PER_CLASS).tolist())
    assert result["accuracy"] == pytest.approx(np.trace(matrix) / TEST_IMAGES)
    heatmap = result["heatmap"]["data"][0]
    assert heatmap["type"] == "heatmap" and heatmap["x"] == heatmap["y"] == CIFAR10_CLASSES
    assert result["per_class_bar"]["data"][0]["type"] == "bar"


# ------------------------------------------------------------------ cache ---

def test_results_are_cached_on_disk_per_checkpoint(client: Any, run_with_checkpoint: Run,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    settings = client.app.state.settings
    first = client.get(api(run_with_checkpoint, "/filters.png")).content
    confusion = client.get(api(run_with_checkpoint, "/confusion")).json()
    folders = list((settings.ARTIFACTS_DIR / str(run_with_checkpoint.id) / "viz").iterdir())
    assert len(folders) == 1 and {p.name for p in folders[0].iterdir()} == {"filters.png", "confusion.json"}
    assert viz_cache.MODELS.loads == 1

    # A fresh process (no model in memory) that may not load one: the answers come from the files.
    visualize.clear_memory_caches()
    monkeypatch.setattr(viz_cache, "loaded_model", lambda ref: pytest.fail("the model was loaded again"))
    assert client.get(api(run_with_checkpoint, "/filters.png")).content == first
    assert client.get(api(run_with_checkpoint, "/confusion")).json() == confusion


def test_a_new_checkpoint_invalidates_the_cache(client: Any, run_with_checkpoint: Run, trained: dict[str, Any]) -> None:
    settings = client.app.state.settings
    assert client.get(api(run_with_checkpoint, "/filters.png")).status_code == 200
    viz_root = settings.ARTIFACTS_DIR / str(run_with_checkpoint.id) / "viz"
    (old,) = viz_root.iterdir()

    # The worker saves a new checkpoint (a later evaluation): other bytes, a new mtime.
    checkpoint = settings.ARTIFACTS_DIR / run_with_checkpoint.checkpoint_path
    checkpoint.write_bytes(trained["checkpoint"].read_bytes() + b"\0" * 16)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    assert client.get(api(run_with_checkpoint, "/filters.png")).status_code == 200
    (new,) = viz_root.iterdir()
    assert new != old and viz_cache.MODELS.loads == 2


# ------------------------------------------------------- missing things ---

def test_api_without_a_checkpoint_yet_is_409_with_detail(client: Any) -> None:
    run = insert_run(client, status=RunStatus.queued, finished_at=None)
    for path in ("", "/filters.png", "/confusion", "/activations?class_name=cat&index=0"):
        response = client.get(api(run, path))
        assert response.status_code == 409, path
        assert "no checkpoint yet" in response.json()["detail"]
    assert upload(client, run, png_bytes()).status_code == 409


def test_api_with_a_missing_checkpoint_file_is_404(client: Any) -> None:
    run = insert_run(client, checkpoint_path="999/checkpoint.pt")
    response = client.get(api(run, "/filters.png"))
    assert response.status_code == 404 and "missing" in response.json()["detail"]


def test_api_without_the_runs_dataset_still_draws_the_filters(client: Any, trained: dict[str, Any]) -> None:
    # CIFAR-10 pickles are not in this DATASETS_DIR: the filters need only the checkpoint.
    run = insert_run(client, trained["checkpoint"], dataset={"kind": "cifar10"},
                     hyperparameters=trained["hyperparameters"])
    assert client.get(api(run, "/filters.png")).status_code == 200
    for path in ("", "/confusion", "/activations?class_name=cat&index=0"):
        response = client.get(api(run, path))
        assert response.status_code == 409 and "test images cannot be loaded" in response.json()["detail"]


def test_api_with_an_unreadable_checkpoint_is_409(client: Any, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    run = insert_run(client, garbage)
    response = client.get(api(run, "/filters.png"))
    assert response.status_code == 409 and "checkpoint cannot be loaded" in response.json()["detail"]


def test_api_for_an_unknown_run_is_404(client: Any) -> None:
    response = client.get("/api/runs/4242/visualize/filters.png")
    assert response.status_code == 404 and response.json() == {"detail": "run 4242 not found"}


# ----------------------------------------------------------------- the page ---

def test_page_renders_at_once_and_leaves_the_pictures_to_its_script(client: Any, run_with_checkpoint: Run,
                                                                   html: Any) -> None:
    response = client.get(f"/runs/{run_with_checkpoint.id}/visualize")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert html.json_block(page, "viz-data") == {"run_id": run_with_checkpoint.id,
                                                 "api": f"/api/runs/{run_with_checkpoint.id}/visualize"}
    assert viz_cache.MODELS.loads == 0 and viz_data.TEST_SETS.loads == 0  # nothing heavy before the page shows
    assert 'class="spinner"' in page and 'id="upload-form"' in page
    scripts = [attrs["src"] for attrs in html.elements(page, "script") if attrs.get("src")]
    assert any("/static/visualize.js" in src for src in scripts) and any("plotly" in src for src in scripts)
    file_input = next(attrs for attrs in html.elements(page, "input") if attrs.get("type") == "file")
    assert file_input["accept"] == "image/png,image/jpeg,image/webp"


def test_page_without_a_checkpoint_says_so(client: Any, html: Any) -> None:
    run = insert_run(client, status=RunStatus.running, finished_at=None)
    response = client.get(f"/runs/{run.id}/visualize")
    assert response.status_code == 200
    assert "No checkpoint yet" in response.text and "has no checkpoint yet (it is running)" in response.text
    assert not any("visualize.js" in (attrs.get("src") or "") for attrs in html.elements(response.text, "script"))


@pytest.mark.parametrize("run_id", ["abc", "-1", "1.5", "%C2%B2"])
def test_page_of_a_run_id_that_is_no_number_is_the_html_404_page(client: Any, run_id: str) -> None:
    response = client.get(f"/runs/{run_id}/visualize")
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in response.text


def test_page_of_an_unknown_run_is_the_html_404_page(client: Any) -> None:
    response = client.get("/runs/4242/visualize")
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
    assert "run 4242 not found" in response.text and "<h1>Not found</h1>" in response.text
