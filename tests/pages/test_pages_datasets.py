"""The datasets page, the launch form's dataset defaults and banner, and the data column of compare."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session

from app.models import Run


def test_datasets_page_lists_sample_with_counts_thumbnails_and_chart(client: TestClient) -> None:
    page = client.get("/datasets")
    assert page.status_code == 200
    text = page.text
    assert 'data-dataset="cifar10-sample" data-status="ready"' in text
    assert 'data-dataset="cifar10" data-status="downloadable"' in text
    assert 'src="/api/datasets/cifar10-sample/thumbnails.png"' in text
    assert re.search(r'data-count="train">5,000<', text) and re.search(r'data-count="test">1,000<', text)
    block = re.search(r'<script type="application/json" id="balance-1-figure">(.*?)</script>', text, re.S)
    figure = json.loads(block.group(1))
    assert [trace["name"] for trace in figure["data"]] == ["train", "test"]
    assert figure["data"][0]["y"] == [500] * 10 and figure["data"][0]["x"][0] == "airplane"
    assert 'id="upload-form"' in text and 'href="/datasets" aria-current="page"' in text


def test_launch_form_defaults_to_sample_with_banner_without_cifar10(client: TestClient) -> None:
    text = client.get("/runs/new").text
    assert 'id="sample-banner"' in text and 'id="download-cifar10"' in text
    assert str(client.app.state.settings.DATASETS_DIR) in text  # where to put the files offline
    select = re.search(r'<select id="f-dataset-name".*?</select>', text, re.S).group(0)
    assert '<option value="cifar10-sample" selected>' in select and 'value="cifar10"' in select
    epochs = re.search(r'id="f-hyperparameters-epochs"[^>]*value="(\d+)"', text, re.S)
    assert epochs and epochs.group(1) == "5"
    assert 'id="f-dataset-fingerprint"' not in text


def test_launch_form_defaults_to_cifar10_when_present(client: TestClient) -> None:
    folder = client.app.state.settings.DATASETS_DIR / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"x")
    text = client.get("/runs/new").text
    assert 'id="sample-banner"' not in text
    assert '<option value="cifar10" selected>' in text
    assert client.get("/api/datasets").json()["default"] == "cifar10"


def test_compare_shows_data_and_warns_when_it_differs(client: TestClient, seed: Any,
                                                     html: Any) -> None:
    first, second = seed.run("succeeded"), seed.run("succeeded")
    with Session(client.app.state.engine) as session:
        run = session.get(Run, second)
        run.dataset = {**run.dataset, "name": "other", "fingerprint": "abcdef0123456789"}
        session.commit()
    text = client.get(f"/compare?ids={first},{second}").text
    cells = re.findall(r"<td class=\"mono\" data-dataset-cell>(.*?)</td>", text, re.S)
    assert "cifar10-sample" in cells[0] and "other" in cells[1] and "abcdef01" in cells[1]
    assert 'id="data-differs"' in text
    same = client.get(f"/compare?ids={first},{first}").text
    assert 'id="data-differs"' not in same


def test_run_page_shows_dataset_name_and_fingerprint(client: TestClient, seed: Any) -> None:
    run_id = seed.run("succeeded")
    text = client.get(f"/runs/{run_id}").text
    assert '<span class="mono" id="run-dataset-name">cifar10-sample</span>' in text
    assert re.search(r'id="run-dataset-fingerprint">[0-9a-f]{16}<', text)
