"""Cognitive alignment filtering (paper Eq. 11 and Eq. 12).

Eq. 11: C_VLM = max(0, C_fore - C_back) / ||max(0, C_fore - C_back)||_1
Eq. 12: C_VLM = max(0, sum_k C_obj(k) - C_back) / ||...||_1
A map with no positive mass cannot be normalized: it is invalid, zeros, never NaN.
"""

from __future__ import annotations

import numpy as np

NO_MASS = "no positive mass in C_fore - C_back"


def positive_normalized(diff: np.ndarray) -> tuple[np.ndarray, bool, str]:
    """(map summing to 1, True, '') or (zeros, False, reason)."""
    positive = np.maximum(diff.astype(np.float64), 0.0)
    total = positive.sum()
    if not np.isfinite(total) or total <= 0.0:
        return np.zeros(diff.shape, np.float32), False, NO_MASS
    return (positive / total).astype(np.float32), True, ""


def eq11(c_fore: np.ndarray, c_back: np.ndarray) -> tuple[np.ndarray, bool, str]:
    return positive_normalized(c_fore.astype(np.float64) - c_back)


def eq12(c_objects: list[np.ndarray], c_back: np.ndarray) -> tuple[np.ndarray, bool, str]:
    """One C_obj per target class present in the answer; their sum competes with C_back."""
    if not c_objects:
        return np.zeros(c_back.shape, np.float32), False, "answer names none of the target objects"
    return positive_normalized(np.sum(c_objects, axis=0, dtype=np.float64) - c_back)
