"""The I-ViT attention through fused SDPA, with no [B, H, N, N] matrix (issue 20).

Why it is exact: the gate's first layer is linear in each attention row,
`C_AGT @ W_agt^T = softmax(q' k^T * s) @ W_agt^T`, which is an attention output whose values are
`W_agt^T` (one [N, h] value row per key token, the same for every head and image). So one SDPA
pass over the values `[v | W_agt^T]` gives both `C_AGT @ v` and the gate's C_AGT half, and
another over `[v | W_vfm^T]` the C_VFM half; the gate's hidden layer is their sum plus b1, and
`C_F @ v = g1 * (C_AGT @ v) + g2 * (C_VFM @ v)` because g1, g2 are per row. Fused SDPA kernels
(flash on CPU and CUDA) want q, k and v of one width, a multiple of 8, so q, k and the values
are zero-padded to it; zeros add nothing to q . k, zero value columns are dropped, and the scale
is passed explicitly (SDPA's default would use the padded width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attend_with_extra_values(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra: torch.Tensor,
    scale: float,
    attn_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(q k^T * scale) @ v, softmax(q k^T * scale) @ extra^T) in one fused pass.

    q, k, v: [B, H, N, d]; extra: [h, N] (a weight whose columns belong to key tokens, e.g. the
    gate's W_agt). Returns [B, H, N, d] and [B, H, N, h].
    """
    batch, heads, tokens, width = v.shape
    hidden = extra.shape[0]
    shared = extra.t().to(v.dtype).expand(batch, heads, tokens, hidden)  # [B, H, N, h]
    # Flash kernels take head sizes in multiples of 8: zero value columns round it up.
    padded = -(-(width + hidden) // 8) * 8
    values = F.pad(torch.cat([v, shared], dim=-1), (0, padded - width - hidden))  # [B, H, N, W]
    pad = (0, padded - q.shape[-1])
    out = F.scaled_dot_product_attention(
        F.pad(q, pad), F.pad(k, pad), values, attn_mask=attn_mask, scale=scale
    )  # [B, H, N, W]
    return out[..., :width], out[..., width : width + hidden]


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T * scale) @ v through SDPA, [B, H, N, d]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def first_query_rows(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask restricted to query 0 (the CLS row), for the rows computed explicitly."""
    if attn_mask is None or attn_mask.dim() < 2 or attn_mask.shape[-2] == 1:
        return attn_mask
    return attn_mask[..., :1, :]
