"""`trainboard train` and `trainboard models`: the study from a terminal.

`app.cli` adds `serve` on top of these; this module needs only ml/ and tqdm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ml.config import ConfigError, DatasetSpec, TrainConfig, from_dict, to_dict, validate
from ml.models import MODELS, build_model, count_parameters, get_spec
from ml.trainer import Callback

DEFAULT_DATA_DIR = Path("data/datasets")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `train` and `models` on a subcommand parser."""
    models = sub.add_parser("models", help="list the model presets with their parameter counts")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=cmd_models)

    train = sub.add_parser("train", help="train a preset from the terminal")
    train.add_argument("--preset", "--model", dest="model", required=True, choices=list(MODELS))
    train.add_argument("--epochs", type=int)
    train.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR,
                       help="an image folder (train/ and test/) or a folder holding cifar-10-batches-py")
    train.add_argument("--dataset", choices=["auto", "cifar10", "imagefolder"], default="auto")
    train.add_argument("--download", action="store_true", help="download CIFAR-10 when it is missing")
    train.add_argument("--limit-train", type=int)
    train.add_argument("--limit-test", type=int)
    train.add_argument("--augment", action="store_true", help="random crop + horizontal flip")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--out", type=Path, default=Path("runs/cli"), help="folder for the checkpoint and summary")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--protocol", choices=["full", "running"])
    train.add_argument("--no-amp", action="store_true", help="fp32 everywhere: no bf16/fp16 autocast, no channels_last")
    train.add_argument("--no-pretrained", action="store_true", help="resnet18: train from scratch")
    train.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                       help='any other trainer option, e.g. --set milestones=[4,8] --set scheduler=\\"cosine\\"')
    train.set_defaults(func=cmd_train)


def model_rows() -> list[dict[str, Any]]:
    """Each preset with its parameter counts (resnet18 is counted without fetching weights)."""
    rows = []
    for spec in MODELS.values():
        model = build_model(spec.name, pretrained=False)
        rows.append({"name": spec.name, "title": spec.title, "parameters": count_parameters(model),
                     "trainable": count_parameters(model, trainable_only=True), "defaults": spec.defaults})
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<10} {'parameters':>12} {'trainable':>12}  title")
    for r in rows:
        print(f"{r['name']:<10} {r['parameters']:>12,} {r['trainable']:>12,}  {r['title']}")
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The preset's defaults, then the command line's overrides."""
    values: dict[str, Any] = dict(get_spec(args.model).defaults)
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError({key: "expected KEY=VALUE"})
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw  # a bare word, e.g. --set optimizer=adam
    flags = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
             "protocol": args.protocol}
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.no_amp:
        values["amp"] = False
    if args.no_pretrained:
        values["pretrained"] = False
    return from_dict(TrainConfig, values)


def dataset_spec(args: argparse.Namespace) -> DatasetSpec:
    kind = args.dataset
    if kind == "auto":
        kind = "imagefolder" if (args.data / "train").is_dir() else "cifar10"
    return validate(DatasetSpec(kind=kind, path=str(args.data), limit_train=args.limit_train,
                                limit_test=args.limit_test, augment=args.augment, download=args.download))


def cmd_train(args: argparse.Namespace) -> int:
    from ml.data import DatasetError, load_splits, user_cache_dir
    from ml.models import PretrainedWeightsMissing
    from ml.trainer import train

    try:
        config, spec = train_config(args), dataset_spec(args)
        began = time.perf_counter()
        # The cache goes to the user's cache folder, never into the data folder given.
        splits = load_splits(spec, data_dir=args.data, seed=config.seed, val_fraction=config.val_fraction,
                             cache_dir=user_cache_dir())
        print(f"data: {splits.source}, loaded in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        checkpoint = args.out / "checkpoint.pt"
        resume = checkpoint if args.resume and checkpoint.exists() else None
        progress = TerminalProgress()
        result = train(args.model, config, splits, device=args.device, callbacks=[progress],
                       checkpoint_path=checkpoint, resume_from=resume, augment=spec.augment,
                       allow_download=spec.download)
        progress.close()
    except (ConfigError, DatasetError, PretrainedWeightsMissing, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {"model": args.model, "status": result.status, "config": to_dict(config), "dataset": to_dict(spec),
               "parameters": result.parameters, "steps": result.steps, "wall_time_s": round(result.wall_time_s, 2),
               "final": result.final, "best": result.best,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def format_metrics(metrics: dict[str, float]) -> str:
    parts = []
    for split in ("train", "val", "test"):
        if f"{split}/loss" in metrics:
            parts.append(f"{split} loss {metrics[f'{split}/loss']:.4f} acc {100 * metrics[f'{split}/acc']:.2f}%")
    return " | ".join(parts)


class TerminalProgress(Callback):
    """A tqdm bar over training steps (images/s and ETA), and one line per evaluation."""

    def __init__(self) -> None:
        from tqdm import tqdm  # imported here: the GPU machines run ml/ without it

        self._tqdm, self.bar = tqdm, None

    def on_train_start(self, info: Any) -> None:
        print(f"training on {info.device}: {info.parameters:,} parameters ({info.trainable_parameters:,} trainable), "
              f"{info.num_train}/{info.num_val}/{info.num_test} train/val/test images", file=sys.stderr)
        self.bar = self._tqdm(total=info.total_steps, initial=info.start_step, unit="step", dynamic_ncols=True)

    def on_step(self, report: Any) -> None:
        self.bar.update(report.step - self.bar.n)
        self.bar.set_postfix(loss=f"{report.loss:.3f}", lr=f"{report.lr:.3g}", img_s=f"{report.images_per_s:,.0f}")

    def on_eval(self, report: Any) -> None:
        self.bar.update(report.step - self.bar.n)
        best = " *" if report.is_best else ""
        self.bar.write(f"eval epoch {report.epoch:5.2f} step {report.step:6d} | {format_metrics(report.metrics)}{best}",
                       file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainboard", description="Train the CIFAR-10 study's models.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
