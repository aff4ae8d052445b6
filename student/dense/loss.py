"""The dense criterion: DETR's own named losses (computed by the library's matcher and loss
inside the model) plus `align`, the same CLS-row alignment to C_VLM as the classifier's."""

from __future__ import annotations

import torch
from torch import nn

from student.loss import InteractionCriterion


class DenseCriterion(nn.Module):
    """loss = DETR's weighted loss + lambda * align; returns every named term."""

    def __init__(self, alignment: InteractionCriterion) -> None:
        super().__init__()
        self.interaction = alignment

    @property
    def alignment(self) -> bool:
        return self.interaction.alignment

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        detr = outputs["detr"]
        if detr.loss is None:
            raise ValueError("DenseCriterion needs the model called with labels (batch targets)")
        rows = outputs.get("align_rows")
        if self.alignment and rows is not None:
            # alignment_term places its zeros by batch["label"]; dense batches have targets
            align = self.interaction.alignment_term(rows, {**batch, "label": detr.loss})  # []
        else:
            align = torch.zeros((), device=detr.loss.device)
        terms = {name: value.detach() for name, value in (detr.loss_dict or {}).items()}
        return {
            "loss": detr.loss + self.interaction.align_lambda * align,
            **terms,
            "align": align,
        }
