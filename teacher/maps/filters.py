"""Cognitive alignment filtering (paper Eq. 11 and Eq. 12).

Eq. 11: C_VLM = max(0, C_fore - C_back) / ||max(0, C_fore - C_back)||_1
Eq. 12: C_VLM = max(0, sum_k C_obj(k) - C_back) / ||...||_1
A map with no positive mass cannot be normalized: it is invalid, zeros, never NaN.
"""

from __future__ import annotations

import numpy as np

from teacher.maps.numerics import NON_FINITE_REASON

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


NO_FOREGROUND = "answer has no foreground word: {answer!r}"


def filter_name(answer_format: str) -> str:
    """The filter an answer format gets: Eq. 12 for the dense prompt's object list, else Eq. 11."""
    return "eq12" if answer_format == "dense" else "eq11"


def filtered_maps(
    fore: list[np.ndarray], back: list[np.ndarray], answer_format: str, grid: int, answer: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, str]:
    """(C_fore, C_back, C_VLM, valid, reason) from the word maps of one answer.

    C_back is the mean of the background words' maps; C_fore the mean of the foreground words'
    (Eq. 11) or, dense, the sum of the object words' (Eq. 12). Non-finite attention (an fp16
    overflow upstream) keeps the row but never lets a NaN reach the cache.
    """
    zeros = np.zeros((grid, grid), np.float32)
    c_back = np.mean(back, axis=0).astype(np.float32) if back else zeros
    if not fore:
        c_fore, c_vlm, valid, reason = zeros, zeros, False, NO_FOREGROUND.format(answer=answer)
    elif filter_name(answer_format) == "eq12":
        c_fore = np.sum(fore, axis=0).astype(np.float32)
        c_vlm, valid, reason = eq12(fore, c_back)
    else:
        c_fore = np.mean(fore, axis=0).astype(np.float32)
        c_vlm, valid, reason = eq11(c_fore, c_back)
    if not (np.isfinite(c_fore).all() and np.isfinite(c_back).all()):
        c_fore, c_back, c_vlm, valid, reason = zeros, zeros, zeros, False, NON_FINITE_REASON
    return c_fore, c_back, c_vlm, valid, reason
