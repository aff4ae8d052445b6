"""Which blocks and which query rows meet C_VLM (StudentConfig.align_last_blocks, align_rows),
against hand computations (explicit loops) and timm's eager attention."""

from __future__ import annotations

import math

import pytest
import torch
from ivit_fixtures import block0_attention, build_pair

from student.build import build
from student.config import StudentConfig
from student.loss import InteractionCriterion
from student.train_params import TrainParams

torch.set_num_threads(1)

TINY = {"depth": 3, "embed_dim": 32, "num_heads": 2, "patch_size": 8}


def hand_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def rows_and_maps(shape: tuple[int, ...], grid: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalized attention rows of `shape` (.., B, [R,] P) and C_VLM maps [B, g, g]."""
    g = torch.Generator().manual_seed(1)
    rows = torch.rand(*shape, generator=g) + 0.05
    c_vlm = torch.rand(shape[1], grid, grid, generator=g)
    c_vlm[:, 1, 0] = 0.0  # an exact zero, as the teacher's relu leaves
    return rows, c_vlm / c_vlm.sum(dim=(1, 2), keepdim=True)


def batch_of(c_vlm: torch.Tensor, valid: list[bool]) -> dict:
    return {
        "label": torch.zeros(len(valid), dtype=torch.long),
        "c_vlm": c_vlm,
        "map_valid": torch.tensor(valid),
    }


def test_last_blocks_average_only_the_deepest_blocks() -> None:
    rows, c_vlm = rows_and_maps((4, 3, 4))  # [L, B, P]
    valid = [True, False, True]
    align = InteractionCriterion(StudentConfig(align_last_blocks=2)).alignment_term(
        rows, batch_of(c_vlm, valid)
    )
    terms = []
    for layer in (2, 3):  # the last two of four blocks
        for b in (0, 2):  # the valid images
            student = [v / sum(rows[layer, b].tolist()) for v in rows[layer, b].tolist()]
            terms.append(hand_kl(c_vlm[b].reshape(-1).tolist(), student))
    assert align.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    everything = InteractionCriterion(StudentConfig()).alignment_term(rows, batch_of(c_vlm, valid))
    assert not torch.isclose(align, everything)  # the first blocks really left out
    with pytest.raises(ValueError, match="align_last_blocks=5 but the model has 4 blocks"):
        InteractionCriterion(StudentConfig(align_last_blocks=5)).alignment_term(
            rows, batch_of(c_vlm, valid)
        )


def test_every_query_row_meets_the_same_map() -> None:
    rows, c_vlm = rows_and_maps((2, 2, 3, 4))  # [L, B, R, P]: 3 query rows per image
    valid = [True, True]
    align = InteractionCriterion(StudentConfig()).alignment_term(rows, batch_of(c_vlm, valid))
    terms = []
    for layer in range(2):
        for b in range(2):
            for r in range(3):
                row = rows[layer, b, r].tolist()
                terms.append(hand_kl(c_vlm[b].reshape(-1).tolist(), [v / sum(row) for v in row]))
    assert align.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # One row per image is today's CLS-only case: [L, B, 1, P] equals [L, B, P].
    cls_only = InteractionCriterion(StudentConfig()).alignment_term(
        rows[:, :, 0], batch_of(c_vlm, valid)
    )
    one_row = InteractionCriterion(StudentConfig()).alignment_term(
        rows[:, :, :1], batch_of(c_vlm, valid)
    )
    assert torch.allclose(cls_only, one_row)


def tiny_cfg(**overrides) -> StudentConfig:
    base = {"model": "vit_tiny_patch16_224", "weights": "none", "num_classes": 3, "img_size": 32}
    return StudentConfig(**{**base, "model_kwargs": dict(TINY), **overrides})


def test_every_row_recording_matches_eager_attention_and_trains() -> None:
    cfg = tiny_cfg(align_rows="all", align_last_blocks=1)
    plain, ivit = build_pair(cfg)
    images = torch.randn(2, 3, 32, 32)
    attention = block0_attention(plain, images)  # [B, H, N, N]
    expected = attention[:, :, :, 1:].mean(dim=1)  # [B, N, P] every query row, head mean
    with torch.no_grad():
        outputs = ivit.forward_with_interactions(images)
    assert outputs["align_rows"].shape == (3, 2, 17, 16)  # [L, B, N, P]
    # At init W_q' = W_q, so block 0's interaction rows are its frozen attention's rows.
    assert torch.allclose(outputs["align_rows"][0], expected, atol=1e-6)
    assert torch.allclose(outputs["align_rows"][:, :, 0], outputs["agt_cls"], atol=1e-6)
    # Only the last block aligns, every one of its 17 rows against the image's map.
    c_vlm = torch.zeros(2, 4, 4)
    c_vlm[:, 1:3, 1:3] = 0.25  # a box map: uniform on 4 cells
    _, criterion = build(cfg)
    align = criterion.alignment_term(outputs["align_rows"], batch_of(c_vlm, [True, True]))
    last = outputs["align_rows"][-1]  # [B, N, P]
    terms = [
        hand_kl(
            c_vlm[b].reshape(-1).tolist(),
            [v / sum(last[b, r].tolist()) for v in last[b, r].tolist()],
        )
        for b in range(2)
        for r in range(17)
    ]
    assert align.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_defaults_keep_todays_alignment_and_reach_the_run() -> None:
    cfg = StudentConfig()
    assert cfg.align_last_blocks is None and cfg.align_rows == "cls"
    # The flat names (the CLI's --align-last-blocks / --align-rows, spec keys) reach the student.
    params = TrainParams.model_validate(
        {"dataset": "sample", "align_last_blocks": 2, "align_rows": "all"}
    )
    assert params.student.align_last_blocks == 2 and params.student.align_rows == "all"
    with pytest.raises(ValueError):
        StudentConfig(align_last_blocks=0)


def test_flags_are_on_the_command_line_and_help_renders() -> None:
    import argparse

    from flows.cli_args import add_model_arguments

    parser = argparse.ArgumentParser()
    add_model_arguments(parser, TrainParams)
    text = parser.format_help()  # raised on descriptions with a literal '%' ("100 %")
    assert "--align-last-blocks" in text and "--align-rows" in text and "100 %" in text
