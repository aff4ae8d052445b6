"""Means and bootstrap standard errors of top-1 over test images and seeds.

A variant's result is a hit matrix [S seeds, N test images] (every variant sees the same test
images in the same order). The bootstrap resamples seeds and images with replacement, together
(a two-level resample: training noise and test-set noise), and takes the standard deviation of
the resampled mean. A difference of two variants is resampled paired: the same seeds and images
on both sides, so the shared test-set noise cancels.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def _resample_indices(
    seeds: int, images: int, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(seeds, size=(resamples, seeds)),  # [R, S]
        rng.integers(images, size=(resamples, images)),  # [R, N]
    )


def bootstrap_se(
    hits: np.ndarray, other: np.ndarray | None = None, resamples: int = RESAMPLES, seed: int = 0
) -> float:
    """Standard error (in the hits' units) of mean(hits), or of mean(hits) - mean(other) when
    `other` is given (same shape, paired)."""
    hits = np.asarray(hits, dtype=float)
    diff = hits if other is None else hits - np.asarray(other, dtype=float)  # [S, N]
    s_idx, n_idx = _resample_indices(*diff.shape, resamples, seed)
    # mean over the resampled seeds of the mean over the resampled images, per resample
    per_seed = diff[:, n_idx].mean(-1)  # [S, R]: each seed's mean on each image resample
    means = np.take_along_axis(per_seed.T, s_idx, axis=1).mean(1)  # [R]
    return float(means.std(ddof=1))
