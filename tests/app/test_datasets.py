"""Datasets: the list, confined paths, uploads (safe extraction, layout, corrupt images), delete, launch checks."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.services import dataset_uploads

CLASSES = ("ant", "bee")


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def imagefolder_members(train: int = 6, test: int = 2, top: str = "") -> dict[str, bytes]:
    """name → bytes of a train/<class>/ + test/<class>/ dataset (optionally under a top folder)."""
    members = {}
    for split, count in (("train", train), ("test", test)):
        for c, cls in enumerate(CLASSES):
            for i in range(count):
                members[f"{top}{split}/{cls}/{i:03d}.png"] = png_bytes(c * 100 + i + (50 if split == "test" else 0))
    return members


def make_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w:gz", extra: Callable[[tarfile.TarFile], None] | None = None
             ) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return out.getvalue()


def upload(client: TestClient, name: str, body: bytes | Iterator[bytes]) -> Any:
    return client.post(f"/api/datasets?name={name}", content=body,
                       headers={"Content-Type": "application/octet-stream"})


def wait_processed(client: TestClient, name: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.get(f"/api/datasets/{name}").json()
        if info["status"] != "processing":
            return info
        time.sleep(0.05)
    raise AssertionError(f"{name} still processing after {timeout_s} s")


def uploaded(client: TestClient, name: str, body: bytes) -> dict[str, Any]:
    response = upload(client, name, body)
    assert response.status_code == 202, response.text
    return wait_processed(client, name)


def datasets_dir(client: TestClient) -> Path:
    return client.app.state.settings.DATASETS_DIR


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# ------------------------------------------------------------------ list ---

def test_list_datasets_sample_and_cifar10_downloadable(client: TestClient) -> None:
    body = client.get("/api/datasets").json()
    by_name = {d["name"]: d for d in body["data"]}
    sample = by_name["cifar10-sample"]
    assert sample["status"] == "ready" and sample["kind"] == "builtin" and not sample["deletable"]
    assert sample["classes"][:2] == ["airplane", "automobile"] and len(sample["classes"]) == 10
    assert sample["counts"]["train"] == [500] * 10 and sample["counts"]["test"] == [100] * 10
    assert sample["images"] == {"train": 5000, "test": 1000}
    assert 4_000_000 < sample["size_bytes"] < 8_000_000
    assert by_name["cifar10"]["status"] == "downloadable" and "cifar-10-batches-py" in by_name["cifar10"]["message"]
    assert body["default"] == "cifar10-sample"


def test_list_datasets_image_folder_in_datasets_dir(client: TestClient) -> None:
    for name, data in imagefolder_members().items():
        path = datasets_dir(client) / "pets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    info = client.get("/api/datasets/pets").json()
    assert info["status"] == "ready" and info["classes"] == list(CLASSES)
    assert info["counts"] == {"train": [6, 6], "test": [2, 2]} and info["deletable"]


def test_thumbnails_one_row_per_class(client: TestClient) -> None:
    response = client.get("/api/datasets/cifar10-sample/thumbnails.png?per_class=4")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as im:
        assert im.size == (4 * 34, 10 * 34)


def test_get_unknown_dataset_404(client: TestClient) -> None:
    assert client.get("/api/datasets/nope").status_code == 404
    assert client.get("/api/datasets/nope/thumbnails.png").status_code == 404


# ------------------------------------------------------------ confinement ---

@pytest.mark.parametrize("path", ["/etc", "/definitely/not/here", "../outside", "/tmp"])
def test_create_run_path_outside_roots_same_422_whether_or_not_it_exists(client: TestClient, path: str) -> None:
    response = client.post("/api/runs", json={"model": "task1", "dataset": {"kind": "imagefolder", "path": path}})
    assert response.status_code == 422
    [error] = [e for e in response.json()["detail"] if e["loc"] == ["body", "dataset", "path"]]
    assert error["msg"] == "outside the allowed dataset roots: allowed are DATASETS_DIR and DATASET_ROOTS"


def test_create_run_symlink_out_of_datasets_dir_refused(client: TestClient, cifar_subset: Path) -> None:
    datasets_dir(client).mkdir(parents=True, exist_ok=True)
    os.symlink(cifar_subset, datasets_dir(client) / "sneaky")
    response = client.post("/api/runs", json={"model": "task1", "dataset": {"kind": "imagefolder", "path": "sneaky"}})
    assert response.status_code == 422 and "outside the allowed dataset roots" in response.text


def test_create_run_symlinked_name_out_of_datasets_dir_refused(client: TestClient, cifar_subset: Path) -> None:
    datasets_dir(client).mkdir(parents=True, exist_ok=True)
    os.symlink(cifar_subset, datasets_dir(client) / "linked")
    response = client.post("/api/runs", json={"model": "task1", "dataset": {"name": "linked"}})
    assert response.status_code == 422 and "outside the allowed dataset roots" in response.text
    assert client.get("/api/datasets/linked").status_code == 404  # not listed either


def test_create_run_path_inside_dataset_roots_accepted(client_factory: Callable, cifar_subset: Path) -> None:
    client = client_factory(DATASET_ROOTS=f"/nonexistent-root,{cifar_subset.parent}")
    response = client.post("/api/runs", json={"model": "task1", "dataset": {"kind": "imagefolder",
                                                                            "path": str(cifar_subset)}})
    assert response.status_code == 201, response.text


def test_create_run_cifar10_download_only_into_datasets_dir(client_factory: Callable, tmp_path: Path) -> None:
    client = client_factory(DATASET_ROOTS=str(tmp_path))
    response = client.post("/api/runs", json={"model": "task1", "dataset": {
        "kind": "cifar10", "path": str(tmp_path), "download": True}})
    assert response.status_code == 422
    assert "DATASETS_DIR" in response.json()["detail"][0]["msg"]


def test_datasets_dir_setting_roots_parse_csv_and_json(settings_factory: Callable, tmp_path: Path) -> None:
    assert settings_factory(DATASET_ROOTS=f"{tmp_path}/a, {tmp_path}/b").DATASET_ROOTS == [tmp_path / "a",
                                                                                         tmp_path / "b"]
    assert settings_factory(DATASET_ROOTS=f'["{tmp_path}/c"]').DATASET_ROOTS == [tmp_path / "c"]


# ----------------------------------------------------------- launch checks ---

def test_create_run_by_name_records_name_and_fingerprint(client: TestClient) -> None:
    response = client.post("/api/runs", json={"model": "task1", "dataset": {
        "name": "cifar10-sample", "fingerprint": "forged"}})
    assert response.status_code == 201, response.text
    dataset = response.json()["dataset"]
    assert dataset["name"] == "cifar10-sample" and dataset["kind"] == "imagefolder"
    assert dataset["fingerprint"] != "forged" and len(dataset["fingerprint"]) == 16


def test_fingerprint_same_content_same_fingerprint_changed_content_differs(client: TestClient) -> None:
    for folder in ("one", "two"):
        for name, data in imagefolder_members().items():
            path = datasets_dir(client) / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    hyper = {"batch_size": 4}

    def fingerprint(name: str) -> str:
        response = client.post("/api/runs", json={"model": "task1", "dataset": {"name": name},
                                                  "hyperparameters": hyper})
        assert response.status_code == 201, response.text
        return response.json()["dataset"]["fingerprint"]

    first = fingerprint("one")
    assert fingerprint("two") == first
    (datasets_dir(client) / "two/train/ant/000.png").write_bytes(png_bytes(999))
    assert fingerprint("two") != first


def test_create_run_batch_larger_than_split_422_names_both_numbers(client: TestClient) -> None:
    for name, data in imagefolder_members(train=6).items():
        path = datasets_dir(client) / "tiny" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    response = client.post("/api/runs", json={"model": "task1", "dataset": {"name": "tiny"},
                                              "hyperparameters": {"batch_size": 64}})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "hyperparameters", "batch_size"]
    assert "batch_size 64" in error["msg"] and "(11 images" in error["msg"]  # 12 minus 1 held out for val


def test_create_run_missing_and_empty_dataset_422(client: TestClient) -> None:
    missing = client.post("/api/runs", json={"model": "task1", "dataset": {"name": "ghost"}})
    assert missing.status_code == 422 and "not found" in missing.text
    for split in ("train/ant", "test/ant"):
        (datasets_dir(client) / "hollow" / split).mkdir(parents=True)
    empty = client.post("/api/runs", json={"model": "task1", "dataset": {"name": "hollow"}})
    assert empty.status_code == 422 and "no images" in empty.text
    cifar = client.post("/api/runs", json={"model": "task1", "dataset": {"kind": "cifar10"}})
    assert cifar.status_code == 422 and "cifar10-sample" in cifar.text
    assert client.get("/api/runs").json()["count"] == 0


# ---------------------------------------------------------------- uploads ---

def test_upload_zip_train_test_layout_listed(client: TestClient) -> None:
    info = uploaded(client, "pets", make_zip(imagefolder_members(top="pets/")))
    assert info["status"] == "ready", info
    assert info["counts"] == {"train": [6, 6], "test": [2, 2]}
    assert client.get("/api/datasets/pets/thumbnails.png").status_code == 200
    assert files_under(datasets_dir(client) / ".uploads") == set()


def test_upload_tar_gz_class_tree_split_by_seeded_fraction(client_factory: Callable) -> None:
    client = client_factory(DATASET_TEST_FRACTION="0.25")
    members = {f"{cls}/{i:03d}.png": png_bytes(c * 10 + i) for c, cls in enumerate(CLASSES) for i in range(8)}
    info = uploaded(client, "split", make_tar(members))
    assert info["status"] == "ready", info
    assert info["counts"] == {"train": [6, 6], "test": [2, 2]}
    test_files = sorted(p.name for p in (datasets_dir(client) / "split/test/ant").iterdir())
    client.delete("/api/datasets/split")
    again = uploaded(client, "split", make_tar(members))
    assert again["counts"] == info["counts"]
    assert sorted(p.name for p in (datasets_dir(client) / "split/test/ant").iterdir()) == test_files


def test_upload_larger_than_the_request_body_limit_accepted(client_factory: Callable) -> None:
    """A dataset archive is held to DATASET_UPLOAD_MAX_BYTES, not to the general MAX_REQUEST_BODY_BYTES."""
    client = client_factory(MAX_REQUEST_BODY_BYTES="1024")
    archive = make_tar(imagefolder_members(), mode="w")
    assert len(archive) > 1024
    assert uploaded(client, "big", archive)["status"] == "ready"
    too_large = client.post("/api/runs", content=b'{"model": "task1", "notes": "' + b"x" * 2048 + b'"}',
                            headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413 and "MAX_REQUEST_BODY_BYTES" in too_large.text


def test_upload_plain_tar_accepted(client: TestClient) -> None:
    assert uploaded(client, "plain", make_tar(imagefolder_members(), mode="w"))["status"] == "ready"


def _symlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("train/ant/link.png")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(info)


def _hardlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("train/ant/hard.png")
    info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    tar.addfile(info)


def _device(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("train/ant/dev")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(info)


def _zip_symlink() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in imagefolder_members().items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("train/ant/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return out.getvalue()


@pytest.mark.parametrize("archive, fragment", [
    pytest.param(make_zip({**imagefolder_members(), "../evil.png": b"x"}), "'..'", id="zip-traversal"),
    pytest.param(make_tar({**imagefolder_members(), "train/../../evil.png": b"x"}), "'..'", id="tar-traversal"),
    pytest.param(make_tar({**imagefolder_members(), "/tmp/evil.png": b"x"}), "absolute", id="tar-absolute"),
    pytest.param(make_zip({**imagefolder_members(), "C:/evil.png": b"x"}), "absolute", id="zip-drive"),
    pytest.param(make_tar(imagefolder_members(), extra=_symlink), "link", id="tar-symlink"),
    pytest.param(make_tar(imagefolder_members(), extra=_hardlink), "link", id="tar-hardlink"),
    pytest.param(make_tar(imagefolder_members(), extra=_device), "device", id="tar-device"),
    pytest.param(_zip_symlink(), "link", id="zip-symlink"),
    pytest.param(make_zip({"train/ant/0.png": png_bytes(1)}), "bad layout", id="train-without-test"),
    pytest.param(make_zip({"readme.txt": b"hello"}), "bad layout", id="no-classes"),
    pytest.param(make_zip({**imagefolder_members(), "train/bee/broken.png": b"\x89PNG not really"}),
                 "corrupt image train/bee/broken.png", id="corrupt-image"),
    pytest.param(b"this is not an archive at all" * 20, "not a .zip, .tar or .tar.gz", id="not-an-archive"),
    pytest.param(make_tar(imagefolder_members())[:400], "damaged or truncated", id="truncated"),
])
def test_upload_unsafe_or_bad_archive_fails_with_reason(client: TestClient, tmp_path: Path, archive: bytes,
                                                        fragment: str) -> None:
    info = uploaded(client, "bad", archive)
    assert info["status"] == "failed" and fragment in info["message"], info
    assert not (datasets_dir(client) / "bad").exists()
    assert not (datasets_dir(client).parent / "evil.png").exists() and not Path("/tmp/evil.png").exists()
    # The failed upload stays listed until deleted; deleting it clears the staging area.
    assert client.delete("/api/datasets/bad").status_code == 204
    assert client.get("/api/datasets/bad").status_code == 404
    assert files_under(datasets_dir(client) / ".uploads") == set()


def test_upload_zip_bomb_stops_at_unpacked_cap(client_factory: Callable) -> None:
    client = client_factory(DATASET_MAX_UNPACKED_BYTES=str(1_000_000))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/ant/bomb.png", b"\0" * 50_000_000)  # 50 MB of zeros, ~50 kB compressed
    assert len(out.getvalue()) < 200_000
    info = uploaded(client, "bomb", out.getvalue())
    assert info["status"] == "failed" and "DATASET_MAX_UNPACKED_BYTES" in info["message"]
    assert files_under(datasets_dir(client) / ".uploads") == {"bomb.json"}


def test_upload_too_many_members_fails(client_factory: Callable) -> None:
    client = client_factory(DATASET_MAX_MEMBERS="10")
    info = uploaded(client, "many", make_tar(imagefolder_members()))
    assert info["status"] == "failed" and "DATASET_MAX_MEMBERS (10)" in info["message"]


def test_upload_chunked_body_over_limit_413_and_nothing_kept(client_factory: Callable) -> None:
    client = client_factory(DATASET_UPLOAD_MAX_BYTES=str(100_000))
    sent = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while the body streams
        for _ in range(50):
            sent.append(1)
            yield b"\0" * 10_000

    response = upload(client, "huge", chunks())
    assert response.status_code == 413 and "DATASET_UPLOAD_MAX_BYTES" in response.text
    assert files_under(datasets_dir(client) / ".uploads") == set()
    assert client.get("/api/datasets/huge").status_code == 404


def test_upload_declared_length_over_limit_413(client_factory: Callable) -> None:
    client = client_factory(DATASET_UPLOAD_MAX_BYTES=str(1000))
    response = upload(client, "big", b"\0" * 5000)
    assert response.status_code == 413


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "x" * 65, "cifar10", "cifar10-sample", ""])
def test_upload_bad_name_4xx(client: TestClient, name: str) -> None:
    response = upload(client, name, make_zip(imagefolder_members()))
    assert response.status_code in (404, 405, 422), response.text
    assert not any(p.name == "x" for p in datasets_dir(client).parent.iterdir())


def test_upload_existing_name_409(client: TestClient) -> None:
    uploaded(client, "pets", make_zip(imagefolder_members()))
    assert upload(client, "pets", make_zip(imagefolder_members())).status_code == 409


def test_upload_empty_body_422(client: TestClient) -> None:
    assert upload(client, "empty", b"").status_code == 422


# ----------------------------------------------------------------- delete ---

def test_delete_dataset_used_by_queued_run_409_then_204(client: TestClient) -> None:
    uploaded(client, "pets", make_zip(imagefolder_members(train=20)))
    run = client.post("/api/runs", json={"model": "task1", "dataset": {"name": "pets"},
                                         "hyperparameters": {"batch_size": 8}}).json()
    conflict = client.delete("/api/datasets/pets")
    assert conflict.status_code == 409 and f"#{run['id']}" in conflict.text
    client.post(f"/api/runs/{run['id']}/cancel")
    assert client.delete("/api/datasets/pets").status_code == 204
    assert not (datasets_dir(client) / "pets").exists()


def test_delete_dataset_used_by_path_409(client: TestClient) -> None:
    uploaded(client, "pets", make_zip(imagefolder_members(train=20)))
    client.post("/api/runs", json={"model": "task1", "dataset": {"kind": "imagefolder", "path": "pets"},
                                   "hyperparameters": {"batch_size": 8}})
    assert client.delete("/api/datasets/pets").status_code == 409


def test_delete_builtin_sample_409(client: TestClient) -> None:
    assert client.delete("/api/datasets/cifar10-sample").status_code == 409


def test_cifar10_download_goes_into_datasets_dir(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                                 wait_until: Callable[..., float]) -> None:
    import torchvision.datasets.utils as tv_utils

    def fake_download(url: str, root: str, **kwargs: Any) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    assert client.post("/api/datasets/cifar10/download").status_code == 202
    wait_until(lambda: client.get("/api/datasets/cifar10").json()["status"] != "processing", 30,
               "the failed download to finish", poll_s=0.05)
    info = client.get("/api/datasets/cifar10").json()
    assert info["status"] == "downloadable" and "network unreachable" in info["message"]
    assert str(datasets_dir(client)) in info["message"]


def test_stored_dataset_resolves_again_as_the_worker_does(client_factory: Callable, cifar_subset: Path) -> None:
    """What a run stores must resolve to the same files in the worker (a path run keeps no name)."""
    from app.services.datasets import resolve_dataset

    client = client_factory(DATASET_ROOTS=str(cifar_subset.parent))
    settings = client.app.state.settings
    for dataset in ({"kind": "imagefolder", "path": str(cifar_subset)}, {"name": "cifar10-sample"}):
        stored = client.post("/api/runs", json={"model": "task1", "dataset": dataset}).json()["dataset"]
        spec = resolve_dataset(stored, settings=settings)
        assert spec.kind == "imagefolder" and spec.path == stored["path"]
