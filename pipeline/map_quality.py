"""How well a map points at the object: box mass, pointing, normalized entropy, cosine.

Maps are [N, G, G] non-negative arrays (raw C_fore / C_back, or normalized C_VLM); `coverage`
is [N, G, G], the share of each cell inside the union of the ground-truth boxes
(pipeline.geometry.box_coverage), so a cell half inside a box counts half. Each metric has a
reference figure, that of a uniform map over the image, so a number can be read against chance:
- box mass: the share of the map's mass inside the boxes (uniform map: the boxes' area share);
- pointing: whether the map's peak cell lies in a box, counted by that cell's coverage
  (ties at the peak are averaged, so the uniform map scores the boxes' area share too);
- normalized entropy: H(map) / log(G * G), 1 for a map spread evenly over the whole grid.
A row whose map has no positive mass gets NaN (callers leave it out and say how many).
"""

from __future__ import annotations

import numpy as np

# Cells within this relative distance of the peak count as the peak (float16 storage ties).
PEAK_RTOL = 1e-3


def _as_distributions(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maps flattened [N, G*G] divided by their sum, has-mass [N])."""
    flat = np.clip(np.asarray(maps, np.float64).reshape(len(maps), -1), 0.0, None)  # [N, GG]
    total = flat.sum(1)  # [N]
    ok = np.isfinite(total) & (total > 0)
    return flat / np.where(ok, total, 1.0)[:, None], ok


def box_mass(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """[N]: sum over cells of map * coverage, with each map normalized to sum 1."""
    p, ok = _as_distributions(maps)
    cov = np.asarray(coverage, np.float64).reshape(len(p), -1)  # [N, GG]
    return np.where(ok, (p * cov).sum(1), np.nan)


def pointing(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """[N]: mean coverage of the cells at the map's peak (1 = the peak is wholly inside a box)."""
    p, ok = _as_distributions(maps)
    cov = np.asarray(coverage, np.float64).reshape(len(p), -1)  # [N, GG]
    peak = p.max(1, keepdims=True)  # [N, 1]
    at_peak = (p >= peak * (1.0 - PEAK_RTOL)) & (p > 0)  # [N, GG]
    hits = (cov * at_peak).sum(1) / np.maximum(at_peak.sum(1), 1)
    return np.where(ok, hits, np.nan)


def normalized_entropy(maps: np.ndarray) -> np.ndarray:
    """[N]: H(p) / log(G*G) in [0, 1]; 0 for a single cell, 1 for a flat map."""
    p, ok = _as_distributions(maps)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return np.where(ok, h / np.log(p.shape[1]), np.nan)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N]: cosine similarity of each pair of rows, flattened; NaN where either is all zero."""
    x = np.asarray(a, np.float64).reshape(len(a), -1)
    y = np.asarray(b, np.float64).reshape(len(b), -1)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    return np.where(ok, (x * y).sum(1) / np.where(ok, norms, 1.0), np.nan)


def localization(maps: np.ndarray, coverage: np.ndarray) -> dict[str, np.ndarray]:
    """The three per-row figures of one kind of map."""
    return {
        "box_mass": box_mass(maps, coverage),
        "pointing": pointing(maps, coverage),
        "entropy": normalized_entropy(maps),
    }


def summarize(values: np.ndarray) -> dict[str, float | int | None]:
    """Mean, spread and count of the finite values (NaN rows left out)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "median": None}
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
    }
