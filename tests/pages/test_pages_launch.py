"""The launch form (/runs/new): generated from ml/config.py, presets, clone pre-fill, API error locations."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from app.pages import launch
from app.services import catalog
from ml.config import DatasetSpec, TrainConfig
from ml.models import MODELS


def _input_value(page: str, loc: str) -> str:
    """The value of the input inside the field with data-loc=`loc`."""
    match = re.search(rf'data-loc="{re.escape(loc)}".*?value="([^"]*)"', page, re.S)
    assert match, loc
    return match.group(1)


def test_launch_form_has_every_config_field(client: TestClient) -> None:
    response = client.get("/runs/new")
    assert response.status_code == 200
    for cls, group in ((TrainConfig, "hyperparameters"), (DatasetSpec, "dataset")):
        for field in dataclasses.fields(cls):
            if group == "dataset" and field.name in launch.HIDDEN_DATASET_FIELDS:  # recorded, not typed in
                assert f'data-loc="{group}.{field.name}"' not in response.text
                continue
            assert f'data-loc="{group}.{field.name}"' in response.text, field.name
            assert str(escape(field.metadata["help"])) in response.text, field.name
    for loc in ("model", "name", "tags", "notes"):
        assert f'data-loc="{loc}"' in response.text


def test_launch_form_shows_constraints_and_choices(client: TestClient) -> None:
    page = client.get("/runs/new").text
    assert re.search(r'for="f-hyperparameters-lr">lr <span class="hint">&gt; 0, ≤ 10</span>', page)
    for choice in ("sgd", "adam", "exponential", "multistep", "cosine", "imagefolder"):
        assert f'<option value="{choice}"' in page
    assert 'id="f-hyperparameters-batch_size" data-input type="number"' in page


def test_launch_form_embeds_every_preset(client: TestClient, html: SimpleNamespace) -> None:
    data = html.json_block(client.get("/runs/new").text, "launch-data")
    assert set(data["models"]) == set(MODELS)
    for name, model in data["models"].items():
        assert model["defaults"] == catalog.preset_hyperparameters(name)
        assert model["parameters"] == catalog.parameter_counts(name)[0]
    assert data["models"]["task1"]["parameters"] == 390_410
    assert data["clone_of"] is None and data["max_sweep_runs"] == 100


def test_launch_form_opens_with_the_first_preset(client: TestClient) -> None:
    page = client.get("/runs/new").text
    assert '<option value="task1" selected>' in page
    assert _input_value(page, "hyperparameters.lr") == "0.05"
    # Without the full CIFAR-10 the form starts on the sample, with epochs for a one-minute first run.
    assert _input_value(page, "hyperparameters.epochs") == "5"
    assert ">390,410</span>" in page


def test_launch_form_model_query_picks_the_preset(client: TestClient) -> None:
    page = client.get("/runs/new?model=net2").text
    assert '<option value="net2" selected>' in page
    assert _input_value(page, "hyperparameters.milestones") == "4, 8"
    assert '<option value="multistep" selected>' in page
    assert '<option value="task1" selected>' in client.get("/runs/new?model=nope").text


def test_launch_clone_prefills_from_the_run(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    run_id = seed.run("succeeded", model="net1", tags=["a", "b"], notes="from <here>",
                      hyperparameters={"lr": 0.0123, "momentum": 0.9, "milestones": [3, 6]})
    response = client.get(f"/runs/new?clone={run_id}")
    assert response.status_code == 200
    page = response.text
    assert f"Clone run <a href=\"/runs/{run_id}\">#{run_id}</a>" in page
    assert '<option value="net1" selected>' in page
    assert _input_value(page, "hyperparameters.lr") == "0.0123"
    assert _input_value(page, "hyperparameters.momentum") == "0.9"
    assert _input_value(page, "hyperparameters.milestones") == "3, 6"
    assert _input_value(page, "hyperparameters.epochs") == "10"  # net1's preset for what the run left out
    assert _input_value(page, "tags") == "a, b"
    assert ">from &lt;here&gt;</textarea>" in page
    assert html.json_block(page, "launch-data")["clone_of"] == run_id


def test_launch_clone_buttons_link_to_the_form(client: TestClient, seed: Any) -> None:
    run_id = seed.run("failed")
    assert f'href="/runs/new?clone={run_id}"' in client.get(f"/runs/{run_id}").text


def test_form_fields_kinds_follow_the_dataclass_types() -> None:
    fields = {f.name: f for f in launch.form_fields(TrainConfig, "hyperparameters")}
    assert (fields["lr"].kind, fields["lr"].constraints, fields["lr"].sweepable) == ("float", "> 0, ≤ 10", True)
    assert (fields["batch_size"].kind, fields["batch_size"].minimum, fields["batch_size"].maximum) == ("int", 1, 4096)
    assert (fields["optimizer"].kind, fields["optimizer"].choices) == ("choice", ("sgd", "adam"))
    assert fields["nesterov"].kind == "bool" and fields["nesterov"].sweepable
    assert fields["milestones"].kind == "int_list" and not fields["milestones"].sweepable
    assert fields["model_options"].kind == "json" and not fields["model_options"].sweepable
    dataset = {f.name: f for f in launch.form_fields(DatasetSpec, "dataset")}
    assert (dataset["limit_train"].kind, dataset["limit_train"].optional) == ("int", True)
    assert (dataset["path"].kind, dataset["path"].optional) == ("text", True)
    assert not dataset["limit_train"].sweepable


def test_form_field_text_values() -> None:
    fields = {f.name: f for f in launch.form_fields(TrainConfig, "hyperparameters")}
    assert fields["lr"].text_value(5e-4) == "0.0005"
    assert fields["milestones"].text_value([4, 8]) == "4, 8"
    assert fields["model_options"].text_value({}) == ""
    assert fields["model_options"].text_value({"filters": [8]}) == '{"filters": [8]}'


def test_launch_sections_place_every_field_once(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [field.name for _, fields in launch.hyperparameter_sections() for field in fields]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    # A field no section names (e.g. one added to TrainConfig later) still shows, under "Other".
    monkeypatch.setitem(launch.HYPERPARAMETER_SECTIONS, "Optimiser", ("optimizer", "lr"))
    other = [f.name for f in dict(launch.hyperparameter_sections())["Other"]]
    assert [name for name in other if name in ("momentum", "weight_decay", "nesterov")] == [
        "momentum", "weight_decay", "nesterov"]


@pytest.mark.parametrize("body, loc", [
    ({"model": "task1", "hyperparameters": {"lr": -1}}, "hyperparameters.lr"),
    ({"model": "task1", "hyperparameters": {"optimizer": "rmsprop"}}, "hyperparameters.optimizer"),
    ({"model": "task1", "hyperparameters": {"milestones": [5, 2]}}, "hyperparameters.milestones"),
    ({"model": "task1", "hyperparameters": {"nesterov": True}}, "hyperparameters.nesterov"),
    ({"model": "custom", "hyperparameters": {"model_options": {"filters": []}}}, "hyperparameters.model_options"),
    ({"model": "task1", "dataset": {"limit_train": 1}}, "dataset.limit_train"),
    ({"model": "task1", "dataset": {"kind": "imagefolder", "path": "/no/such/dir"}}, "dataset.path"),
    ({"model": "nope"}, "model"),
    ({"model": "task1", "name": ""}, "name"),
])
def test_launch_api_errors_point_at_form_fields(client: TestClient, body: dict[str, Any], loc: str) -> None:
    """The form shows a 422 next to the field whose data-loc is a prefix of the error's loc (minus "body")."""
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422, response.text
    error_locs = [".".join(str(part) for part in error["loc"][1:]) for error in response.json()["detail"]]
    assert any(error_loc == loc or error_loc.startswith(loc + ".") for error_loc in error_locs), error_locs
    assert f'data-loc="{loc}"' in client.get("/runs/new").text
