"""The audit record of one map (TeacherConfig.audit): enough to recompute it from one eager
forward of the recorded token ids (tests/test_teacher_rows.py does exactly that)."""

from __future__ import annotations

AUDIT_RULE = (
    "row of token position p is query p-1; word = mean of its rows, "
    "heads and layers over image columns; c_back = mean of back words"
)


def audit_record(
    sequence: list[int], pad: int, answer_end: int, fore_positions: list[list[int]],
    back_positions: list[list[int]], image_start: int, num_image_tokens: int,
    layers: list[int], heads: list[int] | None,
) -> dict:  # fmt: skip
    """Token ids without the left padding, and every position relative to them."""
    return {
        "input_ids": sequence[pad:answer_end],
        "fore_positions": [[p - pad for p in ps] for ps in fore_positions],
        "back_positions": [[p - pad for p in ps] for ps in back_positions],
        "image_positions": [image_start - pad, image_start - pad + num_image_tokens - 1],
        "layers": layers,
        "heads": heads,
        "rule": AUDIT_RULE,
    }
