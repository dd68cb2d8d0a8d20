"""How long a new user's first run takes: the launch form's defaults on the built-in cifar10-sample.

    .venv/bin/python bench/sample_first_run.py [--threads 2]

Trains task1 with its preset and the form's sample epochs (SAMPLE_FORM_EPOCHS) on
the CPU, as the worker does (decode included, cache cold), and prints the wall
time against the one-minute target as a ratio (below 1 meets it). Also prints
the time of one bare training epoch of the same model in the same run, so a
busy machine shows up as a slow baseline rather than as a slow product.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from app.services.datasets import SAMPLE_FORM_EPOCHS
    from ml.config import DatasetSpec, TrainConfig, from_dict
    from ml.data import load_splits
    from ml.models import build_model, get_spec
    from ml.trainer import train

    began = time.perf_counter()
    config = from_dict(TrainConfig, {**get_spec("task1").defaults, "epochs": SAMPLE_FORM_EPOCHS})
    with tempfile.TemporaryDirectory() as cache:
        splits = load_splits(DatasetSpec(name="cifar10-sample"), data_dir=cache, seed=config.seed,
                             val_fraction=config.val_fraction, cache_dir=cache)
    loaded = time.perf_counter() - began
    result = train("task1", config, splits, device="cpu")
    total = time.perf_counter() - began

    # Baseline in the same run: one bare epoch (no evaluation, no callbacks) of the same model.
    model = build_model("task1", {}, pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    images = splits.train.images.float().div(255)
    bare = time.perf_counter()
    for start in range(0, len(images) - config.batch_size + 1, config.batch_size):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images[start:start + config.batch_size]),
                                                 splits.train.labels[start:start + config.batch_size])
        loss.backward()
        optimizer.step()
    bare_epoch = time.perf_counter() - bare

    print(f"data load {loaded:.1f} s; {SAMPLE_FORM_EPOCHS} epochs ({result.steps} steps) + evaluations: "
          f"{total:.1f} s in all; test acc {result.final['test/acc']:.3f}")
    print(f"bare training epoch (baseline): {bare_epoch:.1f} s; first run / (bare epoch × epochs): "
          f"{total / (bare_epoch * SAMPLE_FORM_EPOCHS):.2f}")
    print(f"first run / 60 s target: {total / 60:.2f}")


if __name__ == "__main__":
    main()
