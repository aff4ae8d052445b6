"""`make backbone`'s file is a timm state dict that a run loads as its frozen backbone."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from experiments.backbones import backbone as bb
from experiments.backbones.probe import linear_probe
from student.build import build
from student.train_params import TrainParams


def test_backbone_file_loads_as_a_runs_frozen_backbone(tmp_path: Path) -> None:
    out = tmp_path / "vit.safetensors"
    card = bb.pretrain(out, images=32, epochs=1, batch=16, heldout=16, probe_images=24)
    assert card["model_kwargs"] == bb.MODEL_KWARGS and out.with_suffix(".json").is_file()
    assert set(card["linear_probe_top1"]) == {"shape", "background"}
    saved = load_file(str(out))
    # What `make train WEIGHTS=<file>` builds (the CLI's fields -> StudentConfig -> build).
    params = TrainParams(
        model=bb.MODEL, weights=str(out), img_size=bb.IMG_SIZE, model_kwargs=bb.MODEL_KWARGS
    )
    model, _ = build(params.student.model_copy(update={"num_classes": 4}))
    vit = model.vit
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.2.mlp.fc1.weight"):
        assert torch.equal(vit.state_dict()[name], saved[name]), name
    # The frozen q projection is the file's, and the interaction queries start as its copy.
    dim = bb.MODEL_KWARGS["embed_dim"]
    assert torch.equal(vit.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert torch.equal(
        vit.blocks[0].attn.interaction_q.weight, saved["blocks.0.attn.qkv.weight"][:dim]
    )
    # A new 4-class head replaces the 18-way pretraining head; only it and the new parts train.
    assert saved["head.weight"].shape[0] == 18 and vit.head.weight.shape[0] == 4
    assert not any(p.requires_grad for p in vit.patch_embed.parameters())
    assert not vit.blocks[1].attn.qkv.weight.requires_grad and vit.head.weight.requires_grad


def test_science_spec_uses_the_backbone_architecture() -> None:
    from experiments.spec import load_spec

    base = load_spec("science").base
    assert (base["model"], base["img_size"], base["model_kwargs"]) == (
        bb.MODEL,
        bb.IMG_SIZE,
        bb.MODEL_KWARGS,
    )
    assert Path(base["weights"]).name == bb.DEFAULT_OUT.name


def test_linear_probe_reads_what_the_features_hold() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (400,), generator=g)
    informative = torch.nn.functional.one_hot(labels, 4).float() + 0.3 * torch.randn(
        400, 4, generator=g
    )
    noise = torch.randn(400, 8, generator=g)
    features = torch.cat([informative, noise], dim=1)  # the class lives in 4 of 12 dimensions
    assert linear_probe(features[:200], labels[:200], features[200:], labels[200:]) > 0.9
    # Features that know nothing of the labels: near chance (0.25) on held-out images.
    assert linear_probe(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.45
