"""A plain timm ViT beside the I-ViT built from an identical copy, and block 0's attention
computed by hand from the plain ViT's own q and k: the independent reference the interaction
rows are checked against."""

from __future__ import annotations

import copy
import warnings

import torch

from student.config import StudentConfig
from student.model import IViT, create_backbone


def build_pair(cfg: StudentConfig) -> tuple[torch.nn.Module, IViT]:
    """(the plain timm ViT with eager attention, the I-ViT built from an identical copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vit = create_backbone(cfg)
    plain = copy.deepcopy(vit).eval()
    for block in plain.blocks:
        block.attn.fused_attn = False  # the reference is timm's eager attention, not SDPA
    return plain, IViT(vit, cfg).eval()


@torch.no_grad()
def block0_attention(plain: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of the plain ViT's first block, [B, H, N, N]."""
    x = plain.norm_pre(plain._pos_embed(plain.patch_embed(images)))  # [B, N, C]
    block = plain.blocks[0]
    heads = block.attn.num_heads
    batch, tokens, dim = x.shape
    qkv = block.attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, heads, dim // heads)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # [B, H, N, d]
    return torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1)
