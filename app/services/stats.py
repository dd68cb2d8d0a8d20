"""Mean ± standard deviation over repeated runs (seeds): of final metrics, and of curves point by point.

The standard deviation is the sample one (n − 1): a handful of seeds estimates the spread
of all seeds. With one value there is no spread to estimate, so std is None.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Evaluation epochs are multiples of eval_every (0.5, 1.0, …); rounding absorbs float noise.
EPOCH_DECIMALS = 4


@dataclass(frozen=True)
class Summary:
    mean: float | None
    std: float | None  # sample std; None below two values
    n: int


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def summarize(values: Iterable[Any]) -> Summary:
    """Mean and sample std of the finite numbers among `values` (others are left out, not zeros)."""
    numbers = [v for v in map(_finite, values) if v is not None]
    if not numbers:
        return Summary(None, None, 0)
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return Summary(statistics.fmean(numbers), std, len(numbers))


@dataclass(frozen=True)
class Band:
    """A curve's mean and spread at each x that at least one of the runs reached."""

    x: list[float]
    mean: list[float]
    std: list[float]  # 0 where only one run reached that x
    n: list[int]


def mean_band(curves: Sequence[tuple[Sequence[float], Sequence[float | None]]]) -> Band:
    """(x, y) curves of several runs → the mean ± std at each x.

    Runs that stopped early (early stopping) just stop contributing: n says how
    many runs each point stands for.
    """
    by_x: dict[float, list[float]] = {}
    for xs, ys in curves:
        for x, y in zip(xs, ys):
            value = _finite(y)
            if value is not None:
                by_x.setdefault(round(float(x), EPOCH_DECIMALS), []).append(value)
    band = Band([], [], [], [])
    for x in sorted(by_x):
        summary = summarize(by_x[x])
        band.x.append(x)
        band.mean.append(summary.mean)  # type: ignore[arg-type]  (never None: each list has a value)
        band.std.append(summary.std or 0.0)
        band.n.append(summary.n)
    return band
