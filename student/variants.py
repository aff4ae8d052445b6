"""Named I-ViT variants that leave the attention itself alone (issue 19, item 5).

Applied by IViT after its InteractionAttention layers exist, so they never touch the attention
arithmetic (student/layers.py):

- `query_rank`: a low-rank interaction query, W_q' = W_q + A B with W_q frozen and B zero at
  start, so the I-ViT still equals the ViT at init; rank r adds r * (C + D_attn) parameters per
  block instead of C * D_attn (r = 32 at ViT-S/16: about +0.3M, near the paper's +0.4M).
- `gate_init`: the gates start at g1 = gate_init, g2 = 1 - gate_init (fused attention near C_VFM
  for a small g1) instead of 0.5 / 0.5; g1 + g2 = 1 keeps C_F = C_VFM at init.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LowRankQuery(nn.Module):
    """x -> W_q x + b_q + B (A x): the frozen query projection plus a trainable low-rank term."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Parameter(torch.empty(rank, base.in_features))  # A [r, C]
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))  # B [D, r], zero: W_q' = W_q
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # nn.Linear's own init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up)  # [B, N, D]


def use_low_rank_queries(layers: list[nn.Module], rank: int) -> None:
    """Replace each layer's full interaction query by W_q + A B (the copy of W_q stays frozen)."""
    for layer in layers:
        if layer.interaction_q is None:
            raise ValueError("StudentConfig.query_rank needs interaction_queries=True")
        layer.interaction_q = LowRankQuery(layer.interaction_q, rank)


@torch.no_grad()
def init_gates(layers: list[nn.Module], g1: float) -> None:
    """Start every gate network at sigmoid outputs (g1, 1 - g1): the last layer is zero, so its
    bias alone sets them."""
    for layer in layers:
        if layer.gate is None:
            raise ValueError("StudentConfig.gate_init needs gate=True and interaction_queries=True")
        layer.gate.fc2.bias.copy_(torch.tensor([math.log(g1 / (1 - g1)), math.log((1 - g1) / g1)]))
