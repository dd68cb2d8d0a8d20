"""The client's and CLI's own logic, without a server: SSE parsing, --set parsing, tables, pandas,
and compare's grouping against canned API answers (an httpx.MockTransport).

Everything that talks to the API is tested against a live app in tests/e2e/test_client_cli.py;
the API's grouping itself in tests/app/test_api_sweeps_compare.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from app.cli import main as trainboard_main
from trainboard.cli import format_mean_std, format_table, parse_dataset, parse_settings
from trainboard.client import ApiError, Client, FieldError, Metrics, Series, _parse_sse


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


def compare_answer(group_by: str | None) -> dict[str, Any]:
    """GET /api/compare's JSON for runs 1 and 2 (lr 0.1) and 3 (lr 0.01), as the server shapes it."""
    def run(run_id: int, lr: float, val_acc: float) -> dict[str, Any]:
        return {"id": run_id, "name": f"r{run_id}", "model": "task1", "status": "succeeded", "parameters": 1000,
                "duration_s": 1.0, "hyperparameters": {"lr": lr}, "final_metrics": {"val/acc": val_acc},
                "best_metrics": {}}

    def summaries(val_acc: dict[str, Any]) -> dict[str, Any]:
        empty = {"mean": None, "std": None, "n": 0}
        return {"train/loss": empty, "val/loss": empty, "train/acc": empty, "val/acc": val_acc, "test/acc": empty}

    groups = [{"value": 0.1, "run_ids": [1, 2], "n": 2, "summaries": summaries({"mean": 0.71, "std": 0.0141, "n": 2})},
              {"value": 0.01, "run_ids": [3], "n": 1, "summaries": summaries({"mean": 0.6, "std": None, "n": 1})}]
    return {"runs": [run(1, 0.1, 0.70), run(2, 0.1, 0.72), run(3, 0.01, 0.6)], "differing": ["lr"],
            "metric_names": ["val/acc"], "group_by": group_by, "groups": groups if group_by else []}


def compare_transport(requests: list[httpx.Request]) -> httpx.MockTransport:
    """Answers /api/compare as the server does (422 on group_by other than model or lr); records each request."""
    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        group_by = request.url.params.get("group_by")
        if group_by not in (None, "model", "lr"):
            return httpx.Response(422, json={"detail": [
                {"type": "value_error", "loc": ["query", "group_by"], "msg": "must be one of: model, lr"}]})
        return httpx.Response(200, json=compare_answer(group_by))
    return httpx.MockTransport(handle)


def test_client_compare_group_by_passes_through_and_returns_the_groups() -> None:
    requests: list[httpx.Request] = []
    with Client("http://tb", transport=compare_transport(requests)) as client:
        grouped = client.compare([1, 2, 3], group_by="lr")
        plain = client.compare([1, 2, 3])
    assert dict(requests[0].url.params) == {"ids": "1,2,3", "group_by": "lr"}
    assert dict(requests[1].url.params) == {"ids": "1,2,3"}  # no group_by at all, not an empty one
    assert grouped["group_by"] == "lr" and [group["run_ids"] for group in grouped["groups"]] == [[1, 2], [3]]
    assert grouped["groups"][1]["summaries"]["val/acc"] == {"mean": 0.6, "std": None, "n": 1}
    assert plain["groups"] == [] and plain["group_by"] is None


def test_client_compare_unknown_group_by_raises_with_the_field() -> None:
    with Client("http://tb", transport=compare_transport([])) as client, pytest.raises(ApiError) as raised:
        client.compare([1, 2, 3], group_by="batch_size")
    assert raised.value.status_code == 422
    assert [str(error) for error in raised.value.field_errors] == ["group_by: must be one of: model, lr"]


def test_cli_format_mean_std_percent_loss_single_and_missing() -> None:
    assert format_mean_std("val/acc", {"mean": 0.71, "std": 0.0141, "n": 2}) == "71.00% ± 1.41% (2)"
    assert format_mean_std("val/loss", {"mean": 0.5, "std": 0.01, "n": 3}) == "0.5000 ± 0.0100 (3)"
    assert format_mean_std("val/acc", {"mean": 0.6, "std": None, "n": 1}) == "60.00% (1)"
    assert format_mean_std("test/acc", {"mean": None, "std": None, "n": 0}) == ""


@pytest.fixture
def cli_on_compare_transport(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """The CLI's client talks to compare_transport; returns the requests it makes."""
    requests: list[httpx.Request] = []
    monkeypatch.setattr(Client, "from_env", classmethod(
        lambda cls, url=None, token=None: cls("http://tb", transport=compare_transport(requests))))
    return requests


def test_cli_compare_group_by_prints_a_table_per_group(cli_on_compare_transport: list[httpx.Request],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert trainboard_main(["runs", "compare", "1", "2", "3", "--group-by", "lr"]) == 0
    out = capsys.readouterr().out
    per_run, _, grouped = out.partition("mean ± std (n) by lr\n")
    assert "run 1" in per_run and "71.00%" not in per_run  # the per-run table first, as without --group-by
    lines = grouped.splitlines()
    assert lines[0].split() == ["lr=0.1", "lr=0.01"]
    assert lines[2].split() == ["runs", "#1", "#2", "#3"]
    assert lines[3].split("  ")[0] == "val/acc" and "71.00% ± 1.41% (2)" in lines[3] and "60.00% (1)" in lines[3]
    assert len(lines) == 4  # metrics no run has (train/loss, …) are left out
    assert cli_on_compare_transport[0].url.params["group_by"] == "lr"


def test_cli_compare_without_group_by_prints_no_group_table(cli_on_compare_transport: list[httpx.Request],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert trainboard_main(["runs", "compare", "1", "2", "3"]) == 0
    assert "mean ± std" not in capsys.readouterr().out
    assert "group_by" not in cli_on_compare_transport[0].url.params


def test_cli_compare_unknown_group_by_exits_4_with_the_field(cli_on_compare_transport: list[httpx.Request],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert trainboard_main(["runs", "compare", "1", "2", "--group-by", "batch_size"]) == 4
    assert "group_by: must be one of: model, lr" in capsys.readouterr().err
