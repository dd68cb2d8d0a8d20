"""The client's and CLI's own logic, without a server: SSE parsing, --set parsing, tables, pandas.

Everything that talks to the API is tested against a live app in tests/e2e/test_client_cli.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from app.cli import main as trainboard_main
from trainboard.cli import format_table, parse_dataset, parse_settings
from trainboard.client import FieldError, Metrics, Series, _parse_sse


def test_client_package_imports_without_torch() -> None:
    code = ("import sys, trainboard, trainboard.client, trainboard.cli; "
            "assert 'torch' not in sys.modules and 'app' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_parse_sse_reads_ids_events_multiline_data_and_skips_comments() -> None:
    lines = ["retry: 3000", "", ": keep-alive", "", "id: 7", "event: metrics", 'data: {"a":', 'data: 1}', "",
             "event: end", 'data: {"status": "succeeded"}', ""]
    events = list(_parse_sse(iter(lines)))
    assert [(e.event, e.data, e.id) for e in events] == [
        ("metrics", {"a": 1}, "7"), ("end", {"status": "succeeded"}, None)]


def test_field_error_names_the_field_without_the_body_prefix() -> None:
    error = FieldError(("body", "hyperparameters", "lr"), "must be greater than 0")
    assert error.field == "hyperparameters.lr" and str(error) == "hyperparameters.lr: must be greater than 0"
    assert FieldError(("query", "ids"), "bad").field == "ids"


def metrics() -> Metrics:
    return Metrics(1, {"val/acc": Series("val/acc", [0, 10], [0.0, 1.0], [0.5, 2.0], [0.1, 0.4]),
                       "train/loss": Series("train/loss", [10], [1.0], [2.0], [None])})


def test_metrics_rows_are_the_long_export_format() -> None:
    assert list(metrics().rows()) == [("val/acc", 0, 0.0, 0.5, 0.1), ("val/acc", 10, 1.0, 2.0, 0.4),
                                      ("train/loss", 10, 1.0, 2.0, None)]


def test_metrics_to_pandas_without_pandas_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install pandas"):
        metrics().to_pandas()


def test_metrics_to_pandas_with_pandas_gives_a_long_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeFrame:  # stands in for pandas.DataFrame: records what the client hands over
        def __init__(self, rows: list[Any], columns: list[str]) -> None:
            self.rows, self.columns = rows, columns

    monkeypatch.setitem(sys.modules, "pandas", type(sys)("pandas"))
    sys.modules["pandas"].DataFrame = FakeFrame  # type: ignore[attr-defined]
    frame = metrics().to_pandas()
    assert frame.columns == ["name", "step", "epoch", "time", "value"] and len(frame.rows) == 3


def test_cli_parse_settings_json_values_strings_and_dataset_fields() -> None:
    hyperparameters, dataset = parse_settings(["lr=0.05", "milestones=[4,8]", "optimizer=adam",
                                               "amp=false", "dataset.limit_train=500"])
    assert hyperparameters == {"lr": 0.05, "milestones": [4, 8], "optimizer": "adam", "amp": False}
    assert dataset == {"limit_train": 500}
    assert parse_dataset("cifar10-sample") == {"name": "cifar10-sample"}
    assert parse_dataset("imagefolder:/data/x:y") == {"kind": "imagefolder", "path": "/data/x:y"}


def test_cli_malformed_set_exits_2_without_calling_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    code = trainboard_main(["runs", "--url", "http://127.0.0.1:9", "launch", "--preset", "task1", "--set", "lr"])
    assert code == 2 and "--set expects KEY=VALUE" in capsys.readouterr().err


def test_cli_format_table_aligns_columns_and_right_aligns_numbers() -> None:
    table = format_table(["id", "name", "acc"], [["1", "a", "50.00%"], ["12", "longer", "5.00%"]]).splitlines()
    assert table[0] == "id  name    acc" and table[1] == "--  ------  ------"
    assert table[2] == " 1  a       50.00%" and table[3] == "12  longer   5.00%"
