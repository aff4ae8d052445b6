"""The student's criterion (paper Eq. 13-14, docs/maps.md): cross-entropy plus the alignment of each
block's CLS interaction row to the teacher's C_VLM (or of the last k blocks only, or of every
query row: StudentConfig.align_last_blocks / align_rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from student.config import KlDirection, StudentConfig


def renormalize(rows: torch.Tensor) -> torch.Tensor:
    """Rows over patch tokens (prefix tokens already dropped) rescaled to sum 1."""
    return rows / rows.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) along the last axis; p's exact zeros contribute 0 (xlogy). q is floored at
    the dtype's smallest normal only so that a softmax underflow cannot produce log(0)."""
    floor = torch.finfo(q.dtype).tiny
    return (torch.xlogy(p, p) - p * q.clamp_min(floor).log()).sum(dim=-1)


class InteractionCriterion(nn.Module):
    """loss = CE + lambda * mean over aligned blocks, valid images and query rows of KL (named
    terms, DETR-style).

    `outputs` is IViT.forward_with_interactions's dict, whose align_rows are [L, B, P] (the CLS
    row) or [L, B, N, P] (every query row, each meeting the image's one C_VLM); `batch` is the
    loader's dict with c_vlm [B, g, g] and map_valid [B]. Its settings are the StudentConfig's
    (align_lambda, kl_direction, kl_eps, align_last_blocks); with align_last_blocks = k only the
    last k of the L blocks count. Rows whose map is invalid in the cache carry no alignment signal; a
    batch without any valid row has align = 0 (never NaN).
    """

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.align_lambda = cfg.align_lambda
        self.kl_direction: KlDirection = cfg.kl_direction
        self.kl_eps = cfg.kl_eps
        self.alignment = cfg.aligns
        self.last_blocks = cfg.align_last_blocks  # validated by StudentConfig (> 0)

    def forward(
        self, outputs: dict[str, torch.Tensor | None], batch: dict
    ) -> dict[str, torch.Tensor]:
        logits = outputs["logits"]  # [B, K]
        ce = F.cross_entropy(logits.float(), batch["label"])  # []
        align = self.alignment_term(outputs.get("align_rows"), batch)  # []
        return {"loss": ce + self.align_lambda * align, "ce": ce, "align": align}

    def alignment_term(self, rows: torch.Tensor | None, batch: dict) -> torch.Tensor:
        device = batch["label"].device
        if not self.alignment or rows is None:
            return torch.zeros((), device=device)
        if "c_vlm" not in batch or "map_valid" not in batch:
            # A loader that lost the maps must not quietly turn the constraint off.
            raise KeyError(
                "alignment is on but the batch has no c_vlm/map_valid (loader without maps?)"
            )
        c_vlm = batch["c_vlm"]  # [B, g, g]
        valid = batch["map_valid"].to(device=device, dtype=torch.bool)  # [B]
        if rows.dim() == 3:
            rows = rows.unsqueeze(2)  # [L, B, 1, P]: the CLS row as a one-row case
        num_blocks, batch_size, _, num_patches = rows.shape  # [L, B, R, P]
        if self.last_blocks is not None:
            if self.last_blocks > num_blocks:
                raise ValueError(
                    f"align_last_blocks={self.last_blocks} but the model has {num_blocks} blocks"
                )
            rows = rows[-self.last_blocks :]  # [k, B, R, P]
        if c_vlm.shape[0] != batch_size or c_vlm[0].numel() != num_patches:
            raise ValueError(
                f"batch['c_vlm'] has shape {tuple(c_vlm.shape)} but the student has "
                f"{batch_size} rows of {num_patches} patches: the loader must resample C_VLM "
                "to the student's grid"
            )
        if not bool(valid.any()):
            return rows.sum() * 0.0  # keeps the graph, no NaN from an empty mean
        student = renormalize(rows[:, valid].float())  # [L, V, R, P]
        teacher = c_vlm[valid].reshape(1, -1, 1, num_patches).float()  # [1, V, 1, P]
        if self.kl_direction == "vlm||agt":
            kl = kl_divergence(teacher.expand_as(student), student)  # [L, V, R]
        else:
            # The paper's literal KL(C_AGT || C_VLM): C_VLM's zeros would make it infinite.
            smoothed = (teacher + self.kl_eps) / (1.0 + num_patches * self.kl_eps)  # [1, V, 1, P]
            kl = kl_divergence(student, smoothed.expand_as(student))  # [L, V, R]
        return kl.mean()  # mean over blocks, valid images and query rows
