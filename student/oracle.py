"""The attention oracle (issue 19, docs/science.md): what attending to the right place can give at most.

The frozen backbone and a new head, as the ViT baseline, but in the chosen blocks the attention is
steered by the ground-truth map of each image (box or mask, already on the student's patch grid),
at train and at test. It bounds what any attention transfer can give on a benchmark. Modes:

- `replace`: the CLS query's attention over the patch tokens becomes the map. The CLS row keeps
  its own weight on the prefix tokens (itself), and the patch share of the row, 1 - that weight,
  is spread over the patches as the map says, so the row still sums to 1.
- `restrict`: the model's own CLS row, but a masked softmax: patches outside the map (weight 0)
  are excluded. Frozen later layers accept this better than a foreign row (the probe in docs/science.md).
- `restrict-object`: `restrict`, and the object's own patch rows too (queries on the map attend
  only to the prefix and to the map's patches), so the object's tokens do not mix in the cue
  block by block.

Images whose map is invalid (`map_valid` False) get the frozen attention unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from student.config import StudentConfig
from student.model import create_backbone

OracleMode = Literal["replace", "restrict", "restrict-object"]
ORACLE_MODES: tuple[str, ...] = ("replace", "restrict", "restrict-object")


class OracleAttention(nn.Module):
    """A frozen timm Attention whose attention matrix the ground-truth map steers.

    `target` ([B, P] map over the patch tokens, each valid row summing to 1) and `valid` ([B]
    bool) are set by OracleViT for one forward; with `target` None this is the frozen attention.
    """

    def __init__(self, frozen: Attention, mode: OracleMode, num_prefix_tokens: int) -> None:
        super().__init__()
        if type(frozen) is not Attention:
            raise TypeError(f"OracleAttention wraps timm.layers.Attention, got {type(frozen)}")
        if mode not in ORACLE_MODES:
            raise ValueError(f"oracle mode must be one of {ORACLE_MODES}, got {mode!r}")
        self.mode = mode
        self.num_prefix_tokens = num_prefix_tokens
        self.num_heads, self.head_dim = frozen.num_heads, frozen.head_dim
        self.attn_dim, self.scale = frozen.attn_dim, frozen.scale
        self.qkv, self.q_norm, self.k_norm = frozen.qkv, frozen.q_norm, frozen.k_norm
        self.norm, self.proj = frozen.norm, frozen.proj
        self.target: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("the oracle runs plain ViT encoders: no attention mask")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, d] each
        q, k = self.q_norm(q), self.k_norm(k)  # [B, H, N, d]
        logits = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
        if self.target is None:
            attn = logits.softmax(-1)  # [B, H, N, N]
        elif self.mode == "replace":
            attn = self._replace_cls_row(logits.softmax(-1))  # [B, H, N, N]
        else:
            attn = self._restricted(logits)  # [B, H, N, N]
        out = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)  # [B, N, D_attn]
        return self.proj(self.norm(out))  # [B, N, C]

    def _replace_cls_row(self, attn: torch.Tensor) -> torch.Tensor:
        assert self.target is not None and self.valid is not None
        p0 = self.num_prefix_tokens
        cls_row = attn[:, :, 0]  # [B, H, N]
        patch_mass = cls_row[..., p0:].sum(-1, keepdim=True)  # [B, H, 1]
        steered = torch.cat(
            [cls_row[..., :p0], patch_mass * self.target[:, None, :]], dim=-1
        )  # [B, H, N]
        keep = self.valid[:, None, None]  # [B, 1, 1]
        new_row = torch.where(keep, steered, cls_row)  # [B, H, N]
        return torch.cat([new_row[:, :, None], attn[:, :, 1:]], dim=2)  # [B, H, N, N]

    def _restricted(self, logits: torch.Tensor) -> torch.Tensor:
        """Masked softmax: the steered query rows see the prefix and the map's patches only."""
        assert self.target is not None and self.valid is not None
        B, _, N, _ = logits.shape
        p0 = self.num_prefix_tokens
        on_map = self.target > 0  # [B, P]
        prefix = torch.ones(B, p0, dtype=torch.bool, device=logits.device)  # [B, p0]
        allowed_keys = torch.cat([prefix, on_map], dim=1)  # [B, N]
        steered_rows = torch.zeros(B, N, dtype=torch.bool, device=logits.device)  # [B, N]
        steered_rows[:, 0] = True  # the CLS query
        if self.mode == "restrict-object":
            steered_rows[:, p0:] = on_map  # and the object's own patch queries
        steered_rows &= self.valid[:, None]  # [B, N]
        blocked = steered_rows[:, :, None] & ~allowed_keys[:, None, :]  # [B, N, N]
        return logits.masked_fill(blocked[:, None], float("-inf")).softmax(-1)  # [B, H, N, N]


class OracleViT(nn.Module):
    """Frozen timm ViT + new trainable head, with OracleAttention in the steered blocks.

    `blocks`: None steers every block; k steers only the last k.
    """

    def __init__(self, vit: VisionTransformer, mode: OracleMode, blocks: int | None = None) -> None:
        super().__init__()
        if vit.cls_token is None:
            raise ValueError("the oracle steers the CLS row: pick a ViT with class_token=True")
        self.vit = vit
        for p in vit.parameters():
            p.requires_grad_(False)
        vit.head.requires_grad_(True)
        depth = len(vit.blocks)
        first = 0 if blocks is None else max(0, depth - blocks)
        self.steered: list[OracleAttention] = []
        for index, block in enumerate(vit.blocks):
            if index >= first:
                block.attn = OracleAttention(block.attn, mode, vit.num_prefix_tokens)
                self.steered.append(block.attn)

    def forward(
        self, x: torch.Tensor, maps: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, K] with the attention steered by `maps` ([B, G, G] on the patch grid)."""
        target = maps.flatten(1)  # [B, P]
        valid = torch.ones(len(x), dtype=torch.bool) if valid is None else valid.bool()  # [B]
        # Renormalize the valid rows: the loader's maps sum to 1, a caller's may not.
        target = target / target.sum(1, keepdim=True).clamp_min(1e-12)  # [B, P]
        for layer in self.steered:
            layer.target, layer.valid = target, valid.to(x.device)
        try:
            return self.vit(x)  # [B, K]
        finally:
            for layer in self.steered:
                layer.target = layer.valid = None


def build_oracle(cfg: StudentConfig, mode: OracleMode, blocks: int | None = None) -> OracleViT:
    """The oracle on `cfg`'s backbone (model, weights, classes, seed of the new head)."""
    return OracleViT(create_backbone(cfg), mode, blocks)


def oracle_forward(model: nn.Module, batch: dict, with_interactions: bool) -> dict:
    """student.engine.train_one_epoch's `forward` for an OracleViT: the batch's maps steer it."""
    return {"logits": model(batch["image"], batch["c_vlm"], batch["map_valid"]), "align_rows": None}


@torch.no_grad()
def oracle_predictions(model: OracleViT, batches: list[dict]) -> torch.Tensor:
    """Per-image hits [N] (bool), with the maps of each batch steering the attention."""
    model.eval()
    hits = [model(b["image"], b["c_vlm"], b["map_valid"]).argmax(-1) == b["label"] for b in batches]
    return torch.cat(hits)
