"""The I-ViT's attention (paper Sec. 4.1, docs/maps.md): a frozen timm Attention plus Interaction
Queries and a Gated Control Network.

One InteractionAttention replaces `block.attn` in a timm VisionTransformer and reuses the frozen
qkv / q_norm / k_norm / norm / proj of the module it replaces, so timm's Block, forward_features
and forward_head run unchanged around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from student.config import StudentConfig
from student.fused_attention import attend, attend_with_extra_values, first_query_rows


@dataclass
class InteractionRecord:
    """Per-block rows kept for the loss and the pictures (filled only while recording).

    Each list holds one tensor per block, in block order. Rows are the CLS query's attention over
    the patch tokens, averaged over heads, NOT renormalized (the loss does that).
    """

    num_prefix_tokens: int
    # Also keep every query row (StudentConfig.align_rows='all'): [B, N, P] per block.
    every_row: bool = False
    vfm_cls: list[torch.Tensor] = field(default_factory=list)  # [B, P] each
    agt_cls: list[torch.Tensor] = field(default_factory=list)  # [B, P] each (IQ only)
    gates: list[torch.Tensor] = field(default_factory=list)  # [B, 2] mean g1, g2 each (gate only)
    vfm_rows: list[torch.Tensor] = field(default_factory=list)  # [B, N, P] each (every_row)
    agt_rows: list[torch.Tensor] = field(default_factory=list)  # [B, N, P] each (every_row, IQ)
    # Also keep each head's CLS row (StudentConfig.align_heads='each'): [B, H, P] per block.
    per_head: bool = False
    vfm_heads: list[torch.Tensor] = field(default_factory=list)  # [B, H, P] each (per_head)
    agt_heads: list[torch.Tensor] = field(default_factory=list)  # [B, H, P] each (per_head, IQ)


class GateNetwork(nn.Module):
    """[g1, g2] = sigmoid(FFN([C_AGT; C_VFM])) for every head and query row (Eq. 5).

    The first layer is applied to the two halves separately (W = [W_agt | W_vfm]) so that the
    [B, H, N, 2N] concatenation is never materialized; the arithmetic is the same.
    """

    def __init__(self, num_tokens: int, hidden: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.fc1 = nn.Linear(2 * num_tokens, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 2)
        # Zero last layer: sigmoid(0) = 0.5 for both gates, so at init C_F = (C_AGT + C_VFM) / 2,
        # which equals C_VFM while W_q' = W_q. Training starts exactly from the frozen ViT.
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, c_agt: torch.Tensor, c_vfm: torch.Tensor) -> torch.Tensor:
        self.check_tokens(c_agt.shape[-1])
        w_agt, w_vfm = self.first_layer_halves()  # [h, N] each
        hidden = F.linear(c_agt, w_agt) + F.linear(c_vfm, w_vfm)  # [B, H, N, h]
        return self.from_hidden(hidden)  # [B, H, N, 2]

    def check_tokens(self, tokens: int) -> None:
        if tokens != self.num_tokens:
            raise ValueError(
                f"GateNetwork was built for {self.num_tokens} tokens but got {tokens}: the gate "
                "FFN's input is a whole attention row, so the image size must match the build's "
                "img_size"
            )

    def first_layer_halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_agt, W_vfm), [h, N] each: fc1's weight split at the concatenation point."""
        n = self.num_tokens
        return self.fc1.weight[:, :n], self.fc1.weight[:, n:]

    def from_hidden(self, hidden_without_bias: torch.Tensor) -> torch.Tensor:
        """[g1, g2] from fc1's output before its bias, [..., h] -> [..., 2]."""
        hidden = hidden_without_bias + self.fc1.bias  # [..., h]
        return torch.sigmoid(self.fc2(self.act(hidden)))  # [..., 2]


class InteractionAttention(nn.Module):
    """Self-attention with two query sets sharing keys and values (Eq. 3-9).

    Frozen (taken from the timm module): qkv, q_norm, k_norm, norm, proj. Trainable: W_q'
    (`interaction_q`), the gate FFN, and with `align_on_original` a trainable copy of W_q.
    """

    def __init__(
        self,
        frozen: Attention,
        num_tokens: int,
        cfg: StudentConfig,
    ) -> None:
        super().__init__()
        if type(frozen) is not Attention:
            raise TypeError(
                f"InteractionAttention wraps timm.layers.Attention, got {type(frozen).__name__}: "
                "pick a plain ViT (vit_*), not one with rope/diff/fused-parallel attention"
            )
        if getattr(frozen, "gate", None) is not None:
            raise TypeError("timm Attention(gated=True) is not supported by the I-ViT")
        self.num_heads = frozen.num_heads
        self.head_dim = frozen.head_dim
        self.attn_dim = frozen.attn_dim
        self.scale = frozen.scale
        self.num_tokens = num_tokens
        self.qkv, self.q_norm, self.k_norm = frozen.qkv, frozen.q_norm, frozen.k_norm
        self.attn_drop, self.norm = frozen.attn_drop, frozen.norm
        self.proj, self.proj_drop = frozen.proj, frozen.proj_drop
        self.recorder: InteractionRecord | None = None
        # False forms every [B, H, N, N] matrix (the reference the fused path is tested against).
        self.fused_attention = True

        # Both new query projections start as copies of the frozen W_q: C_AGT == C_VFM at init.
        self.interaction_q = self._copy_of_query() if cfg.interaction_queries else None
        self.original_q = self._copy_of_query() if cfg.align_on_original else None
        with_gate = cfg.gate and cfg.interaction_queries
        self.gate = GateNetwork(num_tokens, cfg.gate_hidden) if with_gate else None

    def _copy_of_query(self) -> nn.Linear:
        w_q = self.qkv.weight[: self.attn_dim]  # [D_attn, C]
        b_q = None if self.qkv.bias is None else self.qkv.bias[: self.attn_dim]
        layer = nn.Linear(w_q.shape[1], self.attn_dim, bias=b_q is not None)
        with torch.no_grad():
            layer.weight.copy_(w_q)
            if b_q is not None:
                layer.bias.copy_(b_q)
        return layer

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("the I-ViT is an encoder: is_causal=True is not supported")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, d] each
        if self.original_q is not None:
            q = self._heads(self.original_q(x))  # [B, H, N, d] trainable W_q (Table 3 row 3)
        q, k = self.q_norm(q), self.k_norm(k)  # [B, H, N, d]

        if self.interaction_q is None and self.recorder is None:
            # Nothing to fuse or record: the frozen ViT's own fused path.
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
            )  # [B, H, N, d]
        elif self._runs_fused():
            out = self._fused(x, q, k, v, attn_mask)  # [B, H, N, d]
        else:
            out = self._explicit(x, q, k, v, attn_mask)  # [B, H, N, d]

        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)  # [B, N, D_attn]
        out = self.norm(out)  # [B, N, D_attn]
        return self.proj_drop(self.proj(out))  # [B, N, C]

    def _runs_fused(self) -> bool:
        """Fused SDPA unless every query row is recorded (align_rows='all'), or attention
        dropout is on (it drops entries of C_F itself, which the fused form never forms)."""
        if not self.fused_attention:
            return False
        if self.recorder is not None and self.recorder.every_row:
            return False
        return not (self.training and self.attn_drop.p > 0)

    def _fused(
        self,
        x: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """C_F @ v without any [B, H, N, N] matrix (student/fused_attention.py says why it is
        exact); only query 0's rows are formed, for the recorder."""
        gates = None
        q_int = None
        if self.interaction_q is None:
            out = attend(q, k, v, self.scale, attn_mask)  # [B, H, N, d]
        else:
            q_int = self.q_norm(self._heads(self.interaction_q(x)))  # [B, H, N, d]
            if self.gate is None:
                out_agt = attend(q_int, k, v, self.scale, attn_mask)  # [B, H, N, d]
                out_vfm = attend(q, k, v, self.scale, attn_mask)  # [B, H, N, d]
                out = 0.5 * out_agt + 0.5 * out_vfm  # fixed weights (w/o GC)
            else:
                self.gate.check_tokens(k.shape[-2])
                w_agt, w_vfm = self.gate.first_layer_halves()  # [h, N] each
                out_agt, hidden_agt = attend_with_extra_values(
                    q_int, k, v, w_agt, self.scale, attn_mask
                )  # [B, H, N, d], [B, H, N, h]
                out_vfm, hidden_vfm = attend_with_extra_values(
                    q, k, v, w_vfm, self.scale, attn_mask
                )  # [B, H, N, d], [B, H, N, h]
                gates = self.gate.from_hidden(hidden_agt + hidden_vfm)  # [B, H, N, 2]
                out = gates[..., :1] * out_agt + gates[..., 1:] * out_vfm  # [B, H, N, d]
        if self.recorder is not None:
            row_mask = first_query_rows(attn_mask)
            c_vfm = self._attention(q[:, :, :1], k, row_mask)  # [B, H, 1, N]
            c_agt = None if q_int is None else self._attention(q_int[:, :, :1], k, row_mask)
            self._record(c_vfm, c_agt, gates)
        return out

    def _explicit(
        self,
        x: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """C_F @ v with every [B, H, N, N] matrix formed: the reference, and the path that
        records every query row."""
        c_vfm = self._attention(q, k, attn_mask)  # [B, H, N, N]
        if self.interaction_q is None:
            c_fused = c_vfm  # [B, H, N, N]
            c_agt, gates = None, None
        else:
            q_int = self.q_norm(self._heads(self.interaction_q(x)))  # [B, H, N, d]
            c_agt = self._attention(q_int, k, attn_mask)  # [B, H, N, N]
            if self.gate is None:
                gates = None
                c_fused = 0.5 * c_agt + 0.5 * c_vfm  # [B, H, N, N] fixed weights (w/o GC)
            else:
                gates = self.gate(c_agt, c_vfm)  # [B, H, N, 2]
                c_fused = gates[..., :1] * c_agt + gates[..., 1:] * c_vfm  # [B, H, N, N]
        if self.recorder is not None:
            self._record(c_vfm, c_agt, gates)
        return self.attn_drop(c_fused) @ v  # [B, H, N, d]

    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        logits = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))  # True = may attend (SDPA)
        elif attn_mask is not None:
            logits = logits + attn_mask  # additive mask, as timm's maybe_add_mask
        return logits.softmax(dim=-1)  # [B, H, N, N]

    def _record(
        self, c_vfm: torch.Tensor, c_agt: torch.Tensor | None, gates: torch.Tensor | None
    ) -> None:
        rec = self.recorder
        assert rec is not None
        p0 = rec.num_prefix_tokens
        # Query 0 is the CLS token in timm ViTs with class_token=True (checked by the model).
        rec.vfm_cls.append(c_vfm[:, :, 0, p0:].mean(dim=1))  # [B, P]
        if c_agt is not None:
            rec.agt_cls.append(c_agt[:, :, 0, p0:].mean(dim=1))  # [B, P]
        if gates is not None:
            rec.gates.append(gates.mean(dim=(1, 2)))  # [B, 2]
        if rec.per_head:
            rec.vfm_heads.append(c_vfm[:, :, 0, p0:])  # [B, H, P]
            if c_agt is not None:
                rec.agt_heads.append(c_agt[:, :, 0, p0:])  # [B, H, P]
        if rec.every_row:
            rec.vfm_rows.append(c_vfm[:, :, :, p0:].mean(dim=1))  # [B, N, P]
            if c_agt is not None:
                rec.agt_rows.append(c_agt[:, :, :, p0:].mean(dim=1))  # [B, N, P]
