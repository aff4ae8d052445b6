"""Named I-ViT variants: each still computes the frozen ViT's logits at init, against the plain
timm ViT (eager attention) built from an identical copy."""

from __future__ import annotations

import torch
from ivit_fixtures import build_pair

from student.config import StudentConfig

TINY = {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}


def cfg(**switches) -> StudentConfig:
    return StudentConfig(
        model="vit_tiny_patch16_224", weights="none", img_size=16, num_classes=3,
        model_kwargs=TINY, **switches,
    )  # fmt: skip


@torch.no_grad()
def test_low_rank_query_equals_the_full_one_at_init():
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain, low = build_pair(cfg(query_rank=4))
    _, full = build_pair(cfg())
    out_low, out_full = (
        low.forward_with_interactions(images),
        full.forward_with_interactions(images),
    )
    torch.testing.assert_close(out_low["logits"], plain(images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_low["agt_cls"], out_full["agt_cls"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_low["agt_cls"], out_low["vfm_cls"], atol=1e-6, rtol=1e-5)
    per_block = {
        n: p.numel() for n, p in low.named_parameters() if p.requires_grad and "interaction_q" in n
    }
    assert sum(per_block.values()) == 2 * 4 * (32 + 32)  # 2 blocks x r (C + D)


@torch.no_grad()
def test_gate_init_starts_near_c_vfm_and_keeps_the_vit():
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plain, model = build_pair(cfg(gate_init=0.05))
    out = model.forward_with_interactions(images)
    torch.testing.assert_close(out["logits"], plain(images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["gates"], torch.tensor([0.05, 0.95]).expand_as(out["gates"]))


def test_train_backbone_makes_every_weight_trainable():
    _, frozen = build_pair(cfg())
    _, open_ = build_pair(cfg(train_backbone=True))
    assert not frozen.vit.patch_embed.proj.weight.requires_grad
    assert all(p.requires_grad for p in open_.parameters())


@torch.no_grad()
def test_per_head_alignment_is_each_heads_kl_against_the_map():
    from ivit_fixtures import block0_attention

    from student.build import build

    one_block = {**TINY, "depth": 1}
    config = StudentConfig(
        model="vit_tiny_patch16_224", weights="none", img_size=16, num_classes=3,
        model_kwargs=one_block, align_heads="each",
    )  # fmt: skip
    plain, model = build_pair(config)
    criterion = build(config)[1]
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(3))
    maps = maps / maps.sum((1, 2), keepdim=True)
    batch = {"label": torch.zeros(3, dtype=torch.long), "c_vlm": maps,
             "map_valid": torch.ones(3, dtype=torch.bool)}  # fmt: skip
    got = criterion(model.forward_with_interactions(images), batch)["align"]
    rows = block0_attention(plain, images)[:, :, 0, 1:]  # [B, H, P]: C_AGT = C_VFM at init
    rows = rows / rows.sum(-1, keepdim=True)
    target = maps.flatten(1)[:, None, :]  # [B, 1, P]
    expected = (target * (target.log() - rows.log())).sum(-1).mean()  # mean over images, heads
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
