"""One shard's rows of the map cache (`ShardMaps`) and the array layout they are stored in.

Kept apart from the store so that the contract on a row (shapes, a normalized C_VLM or an
invalid row with its reason, never NaN) reads in one place.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

MAP_ARRAYS = ("c_vlm", "c_fore", "c_back")
# name -> (zarr data type, value of rows never written); strings are zarr 3's variable-length
# UTF-8 ("string" data type, vlen-utf8 codec), which plain zarr reads back as numpy strings.
ROW_ARRAYS: dict[str, tuple[str, Any]] = {
    "c_vlm": ("float16", 0.0),
    "c_fore": ("float16", 0.0),
    "c_back": ("float16", 0.0),
    "valid": ("bool", False),
    "fg_correct": ("int8", -1),
    "key": ("string", ""),
    "reason": ("string", ""),
    "answer": ("string", ""),
}
ROW_DTYPES = {"float16": np.float16, "bool": np.bool_, "int8": np.int8, "string": str}

# A valid C_VLM sums to 1. Before storage we check in float32 against 1e-3; the stored float16
# rounds each non-negative entry by at most 2**-11 relative, moving the sum by <= 4.9e-4, so
# readers check stored rows against 2e-3 (still catches any map that was never normalized).
NORMALIZED_ATOL_INPUT = 1e-3
NORMALIZED_ATOL_STORED = 2e-3


@dataclasses.dataclass
class ShardMaps:
    """The rows of one shard, in the shard's sample order."""

    keys: list[str]
    c_vlm: np.ndarray  # float [n, G, G], sums to 1 on valid rows, zeros on invalid rows
    c_fore: np.ndarray  # float [n, G, G], raw head/layer mean of the foreground rows
    c_back: np.ndarray  # float [n, G, G], raw head/layer mean of the background rows
    valid: np.ndarray  # bool [n]
    reason: list[str]  # "" when valid
    answer: list[str]  # the teacher's answer text
    fg_correct: np.ndarray  # int8 [n]: 1, 0, or -1 when unknown

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_results(cls, results: Sequence[Any]) -> ShardMaps:
        """Stack the teacher's MapResults (duck-typed: pipeline does not import teacher)."""
        if not results:
            raise ValueError("no MapResults to stack; a shard has at least one sample")
        return cls(
            keys=[r.key for r in results],
            c_vlm=np.stack([np.asarray(r.c_vlm, dtype=np.float32) for r in results]),
            c_fore=np.stack([np.asarray(r.c_fore, dtype=np.float32) for r in results]),
            c_back=np.stack([np.asarray(r.c_back, dtype=np.float32) for r in results]),
            valid=np.array([bool(r.valid) for r in results], dtype=bool),
            reason=[str(r.reason) for r in results],
            answer=[str(r.answer) for r in results],
            fg_correct=np.array([int(r.fg_correct) for r in results], dtype=np.int8),
        )

    def check(self, grid: int, where: str, expected_keys: Sequence[str] | None = None) -> None:
        """Raise ValueError naming `where` and the row if these rows break the cache contract."""
        n = len(self.keys)
        for name in MAP_ARRAYS:
            shape = np.shape(getattr(self, name))
            if shape != (n, grid, grid):
                raise ValueError(f"{where}: {name} has shape {shape}, expected {(n, grid, grid)}")
        for name in ("valid", "fg_correct"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"{where}: {name} has shape {np.shape(getattr(self, name))}")
        for name in ("reason", "answer"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{where}: {name} has {len(getattr(self, name))} rows, not {n}")
        if expected_keys is not None and list(self.keys) != list(expected_keys):
            first = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(self.keys, expected_keys, strict=False))
                    if a != b
                ),
                min(len(self.keys), len(expected_keys)),
            )
            raise ValueError(
                f"{where}: keys do not match the shard's index (first difference at row {first}); "
                "rows must be in the shard's sample order"
            )
        for row in range(n):
            maps = {name: getattr(self, name)[row] for name in MAP_ARRAYS}
            found = row_problems(
                maps, self.valid[row], self.reason[row], self.fg_correct[row], NORMALIZED_ATOL_INPUT
            )
            if found:
                raise ValueError(f"{where}: row {row} ({self.keys[row]}): {found[0]}")


def row_problems(
    maps: dict[str, np.ndarray], valid: bool, reason: str, fg_correct: int, atol: float
) -> list[str]:
    """What breaks the row contract in one row (empty: sound). `write_shard` refuses such rows
    and `cache verify` reports them, so both hold rows to this one definition."""
    problems = [f"{name} is not finite" for name in MAP_ARRAYS if not np.isfinite(maps[name]).all()]
    if fg_correct not in (-1, 0, 1):
        problems.append(f"fg_correct must be 1, 0 or -1, not {int(fg_correct)}")
    c_vlm = np.asarray(maps["c_vlm"], dtype=np.float64)  # [G, G]
    if valid:
        total = c_vlm.sum()
        if (c_vlm < 0).any() or not abs(total - 1.0) <= atol:
            problems.append(
                "is marked valid but c_vlm is not a normalized non-negative map "
                f"(sums to {total:.6f}, min {c_vlm.min():.3g})"
            )
    else:
        if not reason:
            problems.append("is invalid without a reason")
        if np.nan_to_num(c_vlm, nan=1.0).any():
            problems.append("is invalid but c_vlm is not zeros")
    return problems


def row_counts(valid: np.ndarray, reason: Sequence[str], fg_correct: np.ndarray) -> dict[str, Any]:
    """The counts a commit record states about its rows (and `verify` recomputes from them)."""
    valid = np.asarray(valid, dtype=bool)
    fg = np.asarray(fg_correct)
    reasons = Counter(r for r, ok in zip(reason, valid, strict=True) if not ok)
    return {
        "valid": int(valid.sum()),
        "invalid": int((~valid).sum()),
        "invalid_by_reason": dict(sorted(reasons.items())),
        "fg_correct": {
            "correct": int((fg == 1).sum()),
            "wrong": int((fg == 0).sum()),
            "unknown": int((fg == -1).sum()),
        },
    }
