"""Min-max downsampling keeps the extremes of every series."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.downsample import downsample_series, minmax_indices


@pytest.mark.parametrize("n, max_points", [(100_000, 2000), (5001, 100), (37, 10), (11, 4)])
def test_downsample_keeps_min_max_first_last(n: int, max_points: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.normal(size=n).cumsum()
    values[rng.integers(n)] = 1e6  # a spike that averaging would hide
    kept = minmax_indices(values, max_points)
    assert len(kept) <= max_points
    assert np.all(np.diff(kept) > 0)  # original order, no duplicates
    assert kept[0] == 0 and kept[-1] == n - 1
    assert values[kept].max() == values.max() and values[kept].min() == values.min()


def test_downsample_short_series_unchanged() -> None:
    columns = {"step": np.arange(5), "value": np.array([3.0, 1.0, 4.0, 1.0, 5.0])}
    kept, downsampled = downsample_series(columns, 2000)
    assert not downsampled and kept["value"].tolist() == [3.0, 1.0, 4.0, 1.0, 5.0]


def test_downsample_ignores_nan_when_choosing_extremes() -> None:
    values = np.linspace(0, 1, 1000)
    values[::3] = np.nan
    values[500] = -5.0
    kept = minmax_indices(values, 50)
    assert 500 in kept
    assert np.nanmax(values[kept]) == np.nanmax(values)


def test_downsample_all_nan_series_keeps_some_points() -> None:
    kept = minmax_indices(np.full(100, np.nan), 10)
    assert 2 <= len(kept) <= 10


def test_downsample_series_applies_to_every_column() -> None:
    steps = np.arange(10_000)
    columns = {"step": steps, "epoch": steps / 100, "time": steps * 0.1, "value": np.sin(steps / 50.0)}
    kept, downsampled = downsample_series(columns, 200)
    assert downsampled and len(kept["step"]) <= 200
    assert np.array_equal(kept["epoch"], kept["step"] / 100)
    assert np.isclose(kept["value"].max(), 1.0, atol=1e-3) and np.isclose(kept["value"].min(), -1.0, atol=1e-3)
