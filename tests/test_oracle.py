"""The attention oracle against attention computed by hand from a tiny timm ViT's own q, k, v."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from student.config import StudentConfig
from student.model import create_backbone
from student.oracle import OracleAttention, OracleViT

CFG = StudentConfig(
    model="vit_tiny_patch16_224", weights="none", img_size=16, num_classes=3,
    model_kwargs={"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2},
)  # fmt: skip
GRID = 4  # 16 px / 4 px patches: 16 patch tokens + CLS


@pytest.fixture(scope="module")
def vit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # WEIGHTS=none warns
        torch.manual_seed(0)
        return create_backbone(CFG).eval()


def block_input(vit, images: torch.Tensor) -> torch.Tensor:
    """What block 0's attention sees: norm1 of the embedded tokens, [B, N, C]."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    return vit.blocks[0].norm1(x)


def by_hand(attn_module, h: torch.Tensor, edit) -> torch.Tensor:
    """proj(edit(softmax(q k^T / sqrt(d))) v) computed from the module's own weights."""
    B, N, C = h.shape
    H = attn_module.num_heads
    qkv = attn_module.qkv(h).reshape(B, N, 3, H, C // H)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, N, d]
    attn = edit(q @ k.transpose(-1, -2) / (C // H) ** 0.5)  # [B, H, N, N]
    return attn_module.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


def maps_and_images(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 16, 16, generator=gen)
    maps = torch.zeros(3, GRID * GRID)
    maps[0, [5, 6, 9]] = torch.tensor([0.5, 0.25, 0.25])
    maps[1, [0, 15]] = 0.5
    maps[2, 3] = 1.0  # image 2's map is marked invalid below
    valid = torch.tensor([True, True, False])
    return images, maps, valid


@torch.no_grad()
def test_replace_changes_exactly_the_cls_row(vit):
    images, maps, valid = maps_and_images()
    frozen = vit.blocks[0].attn
    h = block_input(vit, images)
    oracle = OracleAttention(copy.deepcopy(frozen), "replace", num_prefix_tokens=1)
    oracle.target, oracle.valid = maps, valid

    def replace(logits):
        attn = logits.softmax(-1).clone()
        for b in range(2):  # the valid images only
            mass = attn[b, :, 0, 1:].sum(-1, keepdim=True)  # [H, 1]
            attn[b, :, 0, 1:] = mass * maps[b]
        return attn

    expected = by_hand(frozen, h, replace)
    got = oracle(h)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    plain = by_hand(frozen, h, lambda logits: logits.softmax(-1))
    # Every patch token's output is the frozen one; the CLS output moved on the valid images.
    torch.testing.assert_close(got[:, 1:], plain[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], plain[2], atol=1e-5, rtol=1e-5)
    assert (got[:2, 0] - plain[:2, 0]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("mode", ["restrict", "restrict-object"])
def test_restrict_masks_the_softmax(vit, mode):
    images, maps, valid = maps_and_images()
    frozen = vit.blocks[0].attn
    h = block_input(vit, images)
    oracle = OracleAttention(copy.deepcopy(frozen), mode, num_prefix_tokens=1)
    oracle.target, oracle.valid = maps, valid

    def restrict(logits):
        logits = logits.clone()
        for b in range(2):
            off_map = [1 + p for p in range(GRID * GRID) if maps[b, p] == 0]
            rows = [0]
            if mode == "restrict-object":
                rows += [1 + p for p in range(GRID * GRID) if maps[b, p] > 0]
            for row in rows:
                logits[b, :, row, off_map] = float("-inf")
        return logits.softmax(-1)

    torch.testing.assert_close(oracle(h), by_hand(frozen, h, restrict), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_last_block_only_leaves_earlier_blocks_frozen(vit):
    images, maps, valid = maps_and_images()
    model = OracleViT(copy.deepcopy(vit), "replace", blocks=1)
    assert [type(b.attn) is OracleAttention for b in model.vit.blocks] == [False, True]
    every = OracleViT(copy.deepcopy(vit), "replace")
    assert all(type(b.attn) is OracleAttention for b in every.vit.blocks)
    # An invalid map (or no steering at all) is the frozen ViT.
    plain = copy.deepcopy(vit)
    torch.testing.assert_close(
        every(images[2:], maps[2:], valid[2:]), plain(images[2:]), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(every(images[:2], maps[:2], valid[:2]), plain(images[:2]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vit.head.weight", "vit.head.bias"}
