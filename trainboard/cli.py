"""`trainboard runs …`: launch, list, watch, compare, export and cancel runs over the REST API.

The server comes from --url / --token, else TRAINBOARD_URL / TRAINBOARD_API_TOKEN. Commands that
follow a run to its end (launch --watch, watch) exit with the run's status: 0 succeeded, 1 failed,
3 cancelled; any API or connection error exits with 4 after printing the API's field messages, and
a malformed option with 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from trainboard.client import ApiError, Client, Run, TrainboardError

EXIT_FOR_STATUS = {"succeeded": 0, "failed": 1, "cancelled": 3}
EXIT_API_ERROR = 4
EXIT_USAGE = 2  # as argparse


class UsageError(Exception):
    """A malformed option value that argparse cannot check by itself (e.g. --set without "=")."""
SUMMARY_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")
LIST_COLUMNS = ("id", "name", "model", "status", "progress", "val/acc", "test/acc", "created")


def add_runs_command(sub: argparse._SubParsersAction) -> None:
    runs = sub.add_parser("runs", help="launch and inspect runs on a Trainboard server (REST API)")
    runs.add_argument("--url", help="server address (default: $TRAINBOARD_URL or http://127.0.0.1:8000)")
    runs.add_argument("--token", help="API token (default: $TRAINBOARD_API_TOKEN)")
    commands = runs.add_subparsers(dest="runs_command", required=True)

    launch = commands.add_parser("launch", help="queue a run")
    launch.add_argument("--preset", "--model", dest="model", required=True, help="model name (trainboard models)")
    launch.add_argument("--dataset", default=None,
                        help="a dataset name as /datasets lists it (e.g. cifar10-sample, cifar10, pets), "
                             "or KIND:PATH such as imagefolder:/data/pets (as the server sees it, inside "
                             "its allowed dataset roots)")
    launch.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter (value as JSON, else a string), e.g. lr=0.05 or "
                             "milestones=[4,8]; dataset.KEY=VALUE sets a dataset field, e.g. "
                             "dataset.limit_train=500; repeatable")
    launch.add_argument("--name", help="run name (default: the server's)")
    launch.add_argument("--tag", dest="tags", action="append", default=[], help="repeatable")
    launch.add_argument("--watch", action="store_true", help="follow the run to its end (exit code = status)")
    launch.set_defaults(runs_func=cmd_launch)

    listing = commands.add_parser("list", help="list runs, newest first")
    listing.add_argument("--status", help="e.g. running,queued")
    listing.add_argument("--model")
    listing.add_argument("--tag")
    listing.add_argument("-q", "--search", dest="q", help="substring of the name or notes")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    listing.set_defaults(runs_func=cmd_list)

    watch = commands.add_parser("watch", help="a live progress bar until the run ends (exit code = status)")
    watch.add_argument("run_id", type=int)
    watch.set_defaults(runs_func=cmd_watch)

    compare = commands.add_parser("compare", help="runs side by side: differing settings and metrics")
    compare.add_argument("run_ids", type=int, nargs="+")
    compare.add_argument("--group-by", metavar="KEY",
                         help="also a mean ± std (n) table per value of KEY: model or a setting that differs, e.g. lr")
    compare.set_defaults(runs_func=cmd_compare)

    export = commands.add_parser("export", help="a run's metrics as CSV (name,step,epoch,time,value) or JSON")
    export.add_argument("run_id", type=int)
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    export.set_defaults(runs_func=cmd_export)

    cancel = commands.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("run_id", type=int)
    cancel.set_defaults(runs_func=cmd_cancel)

    runs.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Dispatch to the chosen subcommand with a client; API errors become a message and exit code 4."""
    handler = args.runs_func
    try:
        with Client.from_env(args.url, args.token) as client:
            return handler(client, args)
    except ApiError as err:
        print(f"error: {err.status_code}: {err.detail}", file=sys.stderr)
        for field_error in err.field_errors:
            print(f"  {field_error}", file=sys.stderr)
        return EXIT_API_ERROR
    except TrainboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_API_ERROR
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


# ---------------------------------------------------------------- launch ---

def parse_settings(pairs: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """["lr=0.05", "dataset.limit_train=500"] → (hyperparameters, dataset fields); values are JSON
    when they parse as JSON, else strings."""
    hyperparameters: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        key = key.strip()
        if key.startswith("dataset."):
            dataset[key.removeprefix("dataset.")] = value
        else:
            hyperparameters[key] = value
    return hyperparameters, dataset


def parse_dataset(text: str | None) -> dict[str, Any]:
    """"cifar10-sample" → {"name": "cifar10-sample"}; "imagefolder:/data/x" → kind and path."""
    if not text:
        return {}
    kind, sep, path = text.partition(":")
    return {"kind": kind, "path": path} if sep else {"name": text}


def cmd_launch(client: Client, args: argparse.Namespace) -> int:
    hyperparameters, dataset_fields = parse_settings(args.settings)
    dataset = {**parse_dataset(args.dataset), **dataset_fields}
    run = client.launch(args.model, dataset=dataset or None, hyperparameters=hyperparameters,
                        name=args.name, tags=args.tags)
    print(f"run {run.id} queued: {run.name} ({run.model}, {run.parameters:,} parameters)  "
          f"{client.url}/runs/{run.id}")
    return watch_run(client, run.id) if args.watch else 0


# ----------------------------------------------------------------- watch ---

def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    return watch_run(client, args.run_id)


def watch_run(client: Client, run_id: int, out: TextIO | None = None) -> int:
    """A progress bar (steps, loss, accuracy) from the run's live events; then the final metrics.
    Returns the exit code for the run's final status."""
    from tqdm import tqdm  # a runtime dependency of the project; imported here to keep `import trainboard` light

    out = out or sys.stderr
    latest: dict[str, float] = {}
    status = None
    with tqdm(total=None, unit="step", desc=f"run {run_id}", file=out, dynamic_ncols=True) as bar:
        for event in client.watch(run_id):
            if event.event == "progress":
                if event.data.get("total_steps") and bar.total != event.data["total_steps"]:
                    bar.total = event.data["total_steps"]
                bar.n = event.data.get("step") or 0
                bar.refresh()
            elif event.event == "metrics":
                for series in event.data["series"]:
                    if series["value"] and series["name"] in ("train/step_loss", "train/loss", "val/acc"):
                        latest[series["name"]] = series["value"][-1]
                bar.set_postfix_str(_postfix(latest), refresh=True)
            elif event.event == "status":
                status = event.data.get("status")
                bar.set_description_str(f"run {run_id} {status}")
            elif event.event == "event":
                bar.write(f"  {event.data['kind']}: {event.data['message']}", file=out)
            elif event.event == "end":
                status = event.data.get("status")
    run = client.get_run(run_id)
    print(format_summary(run), file=sys.stdout)
    return EXIT_FOR_STATUS.get(status or run.status, 1)


def _postfix(latest: dict[str, float]) -> str:
    loss = latest.get("train/step_loss", latest.get("train/loss"))
    parts = [f"loss {loss:.4f}"] if loss is not None else []
    if latest.get("val/acc") is not None:
        parts.append(f"val acc {latest['val/acc']:.2%}")
    return ", ".join(parts)


def format_summary(run: Run) -> str:
    lines = [f"run {run.id} {run.status}" + (f" in {run.duration_s:.1f} s" if run.duration_s else "")]
    if run.error:
        lines.append(f"  error: {run.error.splitlines()[0]}")
    for name in SUMMARY_METRICS:
        if run.final_metrics.get(name) is not None:
            lines.append(f"  {name:<10} {format_metric(name, run.final_metrics[name])}")
    return "\n".join(lines)


def format_metric(name: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return f"{value:.2%}" if name.endswith("/acc") else f"{value:.4f}"


# ------------------------------------------------------------ list, compare ---

def cmd_list(client: Client, args: argparse.Namespace) -> int:
    listing = client.list_runs(status=args.status, model=args.model, tag=args.tag, q=args.q, limit=args.limit)
    if args.json:
        print(json.dumps({"data": [run.raw for run in listing.runs], "count": listing.count}, indent=2))
        return 0
    rows = [[str(run.id), run.name, run.model, run.status, _progress(run),
             format_metric("val/acc", run.best_metrics.get("val/acc")),
             format_metric("test/acc", run.final_metrics.get("test/acc")),
             run.created_at.strftime("%Y-%m-%d %H:%M") if run.created_at else ""] for run in listing.runs]
    print(format_table(LIST_COLUMNS, rows))
    print(f"{len(listing.runs)} of {listing.count} runs")
    return 0


def _progress(run: Run) -> str:
    return f"{run.step}/{run.total_steps}" if run.total_steps else ""


def cmd_compare(client: Client, args: argparse.Namespace) -> int:
    comparison = client.compare(args.run_ids, group_by=args.group_by)
    runs = comparison["runs"]
    headers = ["", *(f"run {run['id']}" for run in runs)]
    rows = [["name", *(run["name"] for run in runs)], ["model", *(run["model"] for run in runs)],
            ["status", *(run["status"] for run in runs)],
            ["parameters", *(f"{run['parameters']:,}" for run in runs)]]
    differing = [key for key in comparison["differing"] if key != "model"]
    if any(key.startswith("dataset.") for key in differing):  # the comparison rows carry no dataset
        datasets = {run["id"]: client.get_run(run["id"]).dataset for run in runs}
        runs = [{**run, "dataset": datasets[run["id"]]} for run in runs]
    for key in differing:
        rows.append([key, *(_setting(run, key) for run in runs)])
    for name in comparison["metric_names"]:
        rows.append([name, *(format_metric(name, run["final_metrics"].get(name, run["best_metrics"].get(name)))
                             for run in runs)])
    print(format_table(headers, rows))
    if comparison.get("groups"):  # a server older than group_by sends no groups: the table above is all
        print(f"\nmean ± std (n) by {comparison['group_by']}")
        print(format_groups(comparison["group_by"], comparison["groups"]))
    return 0


def format_groups(group_by: str, groups: Sequence[dict[str, Any]]) -> str:
    """One column per group (as the per-run table has one per run): its runs, then each metric's
    mean ± std (n) over them; metrics that no run of any group has are left out."""
    headers = ["", *(f"{group_by}={_text(group['value'])}" for group in groups)]
    # "#1 #2" as the page writes them; "1,2" would read as a number and be right-aligned.
    rows = [["runs", *(" ".join(f"#{run_id}" for run_id in group["run_ids"]) for group in groups)]]
    names = list(dict.fromkeys(name for group in groups for name in group["summaries"]))
    for name in names:
        if any(group["summaries"].get(name, {}).get("n") for group in groups):
            rows.append([name, *(format_mean_std(name, group["summaries"].get(name, {})) for group in groups)])
    return format_table(headers, rows)


def format_mean_std(name: str, summary: Mapping[str, Any]) -> str:
    """{"mean", "std", "n"} → "71.00% ± 1.41% (2)"; one value has no std: "60.00% (1)"; none: ""."""
    if summary.get("mean") is None:
        return ""
    spread = f" ± {format_metric(name, summary['std'])}" if summary.get("std") is not None else ""
    return f"{format_metric(name, summary['mean'])}{spread} ({summary.get('n', 0)})"


def _setting(run: dict[str, Any], key: str) -> str:
    """A value by compare's keys: "dataset.<field>" or a hyperparameter."""
    if key.startswith("dataset."):
        value = run.get("dataset", {}).get(key.removeprefix("dataset."))
    else:
        value = run["hyperparameters"].get(key)
    return "" if value is None else _text(value)


def _text(value: Any) -> str:
    """A setting's value as the tables show it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).rjust(width) if _numeric(str(cell)) else str(cell).ljust(width)
                         for cell, width in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def _numeric(text: str) -> bool:
    return bool(text) and text.replace(",", "").replace(".", "").replace("%", "").replace("-", "").isdigit()


# ------------------------------------------------------------ export, cancel ---

def cmd_export(client: Client, args: argparse.Namespace) -> int:
    metrics = client.metrics(args.run_id)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        if args.format == "csv":
            writer = csv.writer(out)
            writer.writerow(["name", "step", "epoch", "time", "value"])
            writer.writerows(metrics.rows())
        else:
            run = client.get_run(args.run_id)
            json.dump({"run": run.raw, "metrics": {name: {"step": s.step, "epoch": s.epoch, "time": s.time,
                                                          "value": s.value}
                                                   for name, s in metrics.series.items()}}, out)
            out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    run = client.cancel(args.run_id)
    note = "cancelled" if run.status == "cancelled" else "cancel requested; it stops after its current step"
    print(f"run {run.id}: {note}")
    return 0
