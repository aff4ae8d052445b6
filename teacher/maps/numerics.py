"""Numerical health of a run: rows whose attention was not finite.

A non-finite row is kept as an invalid row (never NaN in the cache). A few are tolerable; many
mean the teacher itself is broken (fp16 overflow, a bad quantization), and a run that quietly
wrote thousands of invalid rows would look like a success. So past a small fraction the run
fails, loudly, after writing its summary with the count.
"""

from __future__ import annotations

NON_FINITE_REASON = "non-finite attention (numerical overflow in the teacher)"
DEFAULT_MAX_NON_FINITE = 0.01  # fraction of a run's rows


class NonFiniteRowsError(RuntimeError):
    """More of a run's rows had non-finite attention than its threshold allows."""


def count_non_finite(reasons: list[str]) -> int:
    return sum(reason == NON_FINITE_REASON for reason in reasons)


def check_non_finite(non_finite: int, rows: int, max_fraction: float) -> None:
    if rows and non_finite > max_fraction * rows:
        raise NonFiniteRowsError(
            f"{non_finite} of {rows} rows of this run had non-finite attention "
            f"(more than {max_fraction:.1%}); they are stored as invalid rows, but the teacher "
            "is numerically broken: use dtype bfloat16 (or float32), check the quantization, "
            "and rerun (committed shards are kept; delete the entry to recompute them)."
        )
