"""Min-max downsampling for chart series: fewer points, the same extremes.

A chart of 100,000 losses has at most a few thousand pixels across, so the
server sends at most `max_points` points per series. Averaging or striding
would hide the spikes one looks for; min-max keeps, for each of max_points/2
consecutive buckets, the points holding the bucket's smallest and largest
value (in their original order), plus the first and last point. So the global
minimum and maximum always survive.
"""

from __future__ import annotations

import numpy as np


def minmax_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Sorted indices of the points to keep (all of them when there are at most max_points).

    NaN values never count as a bucket's min or max unless the whole bucket is NaN.
    """
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    if max_points < 4:
        raise ValueError("max_points must be at least 4")

    # First and last are kept separately, so the buckets share max_points - 2 slots, two each.
    buckets = (max_points - 2) // 2
    inner = values[1:-1]
    starts = np.linspace(0, len(inner), buckets + 1).astype(np.int64)[:-1]
    starts = np.unique(starts)  # tiny inputs can give empty buckets
    bucket_of = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(inner))))

    for_min = np.where(np.isnan(inner), np.inf, inner)
    for_max = np.where(np.isnan(inner), -np.inf, inner)
    keep_min = _first_index_of_extreme(for_min, np.minimum.reduceat(for_min, starts), bucket_of, starts)
    keep_max = _first_index_of_extreme(for_max, np.maximum.reduceat(for_max, starts), bucket_of, starts)
    kept = np.union1d(keep_min, keep_max) + 1  # back to indices into `values`
    return np.concatenate([[0], kept, [n - 1]])


def _first_index_of_extreme(values: np.ndarray, extreme_per_bucket: np.ndarray,
                            bucket_of: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """For each bucket, the index of the first value equal to the bucket's extreme (vectorised argmin)."""
    hits = np.flatnonzero(values == extreme_per_bucket[bucket_of])
    hit_buckets = bucket_of[hits]  # non-decreasing, as hits are sorted
    found = hits[np.flatnonzero(np.diff(hit_buckets, prepend=-1))]
    # A bucket without a hit cannot happen, except all-NaN buckets after the ±inf fill; keep their start.
    if len(found) < len(starts):
        missing = np.setdiff1d(np.arange(len(starts)), bucket_of[found])
        found = np.concatenate([found, starts[missing]])
    return found


def downsample_series(columns: dict[str, np.ndarray], max_points: int,
                      by: str = "value") -> tuple[dict[str, np.ndarray], bool]:
    """Downsample parallel columns (step, epoch, time, value…) by the extremes of column `by`.

    Returns the kept columns and whether anything was dropped.
    """
    values = columns[by]
    if len(values) <= max_points:
        return columns, False
    keep = minmax_indices(values.astype(np.float64), max_points)
    return {name: column[keep] for name, column in columns.items()}, True
