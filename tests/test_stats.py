"""The bootstrap standard error against the binomial formula and its paired difference."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.stats import bootstrap_se


def test_one_seed_matches_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    hits = (rng.random((1, 1000)) < 0.8).astype(float)
    p = hits.mean()
    assert bootstrap_se(hits) == pytest.approx(np.sqrt(p * (1 - p) / 1000), rel=0.1)


def test_paired_difference_cancels_the_shared_test_noise():
    rng = np.random.default_rng(1)
    hits = (rng.random((3, 500)) < 0.7).astype(float)
    assert bootstrap_se(hits, hits) == 0.0
    flipped = hits.copy()
    flipped[:, :10] = 1 - flipped[:, :10]  # 10 of 500 images differ, in every seed
    assert 0 < bootstrap_se(hits, flipped) < 0.5 * bootstrap_se(hits)


def test_seed_spread_adds_to_the_error():
    rng = np.random.default_rng(2)
    calm = (rng.random((3, 800)) < 0.7).astype(float)
    offsets = np.array([0.55, 0.7, 0.85])[:, None]  # seeds that disagree by 15 points
    noisy = (rng.random((3, 800)) < offsets).astype(float)
    assert bootstrap_se(noisy) > 2 * bootstrap_se(calm)
