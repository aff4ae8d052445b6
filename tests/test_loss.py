"""The criterion against a hand computation (explicit loops over numpy), invalid rows excluded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from student.config import StudentConfig
from student.loss import InteractionCriterion

torch.set_num_threads(1)


def example(valid: list[bool]) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    blocks, batch, grid, classes = 2, len(valid), 2, 3
    rows = torch.rand(blocks, batch, grid * grid, generator=g) + 0.05  # head-mean CLS rows
    rows = rows / (rows.sum(-1, keepdim=True) * 1.25)  # prefix tokens took some mass: sum 0.8
    c_vlm = torch.rand(batch, grid, grid, generator=g)
    c_vlm[:, 0, 1] = 0.0  # exact zeros, as relu(C_fore - C_back) leaves
    c_vlm = c_vlm / c_vlm.sum(dim=(1, 2), keepdim=True)
    for b, ok in enumerate(valid):
        if not ok:
            c_vlm[b] = 0.0  # the cache's invalid rows are all zeros
    outputs = {"logits": torch.randn(batch, classes, generator=g), "align_rows": rows}
    batch_dict = {
        "label": torch.tensor([0, 2, 1, 1][:batch]),
        "c_vlm": c_vlm,
        "map_valid": torch.tensor(valid),
    }
    return outputs, batch_dict


def hand_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for row, label in zip(logits, labels, strict=True):
        total += -(row[label] - math.log(sum(math.exp(v) for v in row)))
    return total / len(labels)


def hand_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def hand_alignment(
    rows: np.ndarray, c_vlm: np.ndarray, valid: list[bool], literal: bool, eps: float
) -> float:
    terms = []
    for layer in range(rows.shape[0]):
        for b, ok in enumerate(valid):
            if not ok:
                continue
            student = [v / sum(rows[layer, b]) for v in rows[layer, b]]
            teacher = list(c_vlm[b].reshape(-1))
            if literal:
                smoothed = [(t + eps) / (1 + len(teacher) * eps) for t in teacher]
                terms.append(hand_kl(student, smoothed))
            else:
                terms.append(hand_kl(teacher, student))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("literal", [False, True], ids=["kl(vlm||agt)", "kl(agt||vlm)-paper"])
def test_loss_terms_match_a_hand_computation_with_invalid_rows_excluded(literal: bool) -> None:
    valid = [True, False, True, True]
    outputs, batch = example(valid)
    eps, lam = 1e-3, 0.5
    criterion = InteractionCriterion(
        StudentConfig(
            align_lambda=lam, kl_direction="agt||vlm" if literal else "vlm||agt", kl_eps=eps
        )
    )
    losses = criterion(outputs, batch)
    ce = hand_cross_entropy(outputs["logits"].double().numpy(), batch["label"].numpy())
    align = hand_alignment(
        outputs["align_rows"].double().numpy(), batch["c_vlm"].double().numpy(), valid, literal, eps
    )
    assert losses["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert losses["align"].item() == pytest.approx(align, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(ce + lam * align, rel=1e-5)


def test_invalid_rows_do_not_change_the_alignment_term() -> None:
    outputs, batch = example([True, False, True, True])
    criterion = InteractionCriterion(StudentConfig())
    before = criterion(outputs, batch)["align"]
    outputs["align_rows"][:, 1] = torch.rand_like(outputs["align_rows"][:, 1])  # the invalid row
    assert torch.equal(criterion(outputs, batch)["align"], before)


def test_no_valid_rows_gives_zero_alignment_and_finite_gradients() -> None:
    outputs, batch = example([False, False, False])
    outputs["align_rows"].requires_grad_(True)
    losses = InteractionCriterion(StudentConfig())(outputs, batch)
    assert losses["align"].item() == 0.0
    assert torch.equal(losses["loss"], losses["ce"])
    losses["loss"].backward()
    assert torch.isfinite(outputs["align_rows"].grad).all()


def test_disabled_alignment_and_wrong_grid() -> None:
    outputs, batch = example([True, True])
    assert (
        InteractionCriterion(StudentConfig(alignment=False))(outputs, batch)["align"].item() == 0.0
    )
    assert (
        InteractionCriterion(StudentConfig(align_lambda=0.0))(outputs, batch)["align"].item() == 0.0
    )
    batch["c_vlm"] = torch.rand(2, 3, 3)
    with pytest.raises(ValueError, match="student's grid"):
        InteractionCriterion(StudentConfig())(outputs, batch)
