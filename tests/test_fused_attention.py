"""The fused SDPA form of the I-ViT attention equals the explicit one (outputs, recorded rows,
loss, gradients) and a block computed by hand from Eq. 3-9 with the concatenated gate input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from ivit_fixtures import build_pair

from student.build import build
from student.config import StudentConfig
from student.model import explicit_attention

torch.set_num_threads(1)

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}


def tiny_cfg(**overrides) -> StudentConfig:
    base = {"model": "vit_tiny_patch16_224", "weights": "none", "num_classes": 5, "img_size": 32}
    return StudentConfig(**{**base, "model_kwargs": dict(TINY), **overrides})


def perturb_trainables(model: torch.nn.Module, seed: int = 7) -> None:
    """Move W_q', the gates and the head off their init, so that C_AGT != C_VFM and g1 != g2
    (at init both forms reduce to the frozen ViT and would agree trivially)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def batch_for(grid: int, size: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    c_vlm = torch.rand(size, grid, grid, generator=g)
    return {
        "image": torch.randn(size, 3, 32, 32, generator=g),
        "label": torch.randint(0, 5, (size,), generator=g),
        "c_vlm": c_vlm / c_vlm.sum(dim=(1, 2), keepdim=True),
        "map_valid": torch.ones(size, dtype=torch.bool),
    }


def loss_outputs_and_grads(model, criterion, batch: dict) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    outputs = model.forward_with_interactions(batch["image"])
    losses = criterion(outputs, batch)
    losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {**outputs, **losses}, grads


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"gate": False},
        {"interaction_queries": False, "alignment": False},
        {"align_on_original": True},
        {"gate_hidden": 40},  # wider than the head (d = 16): the padding goes the other way
        {"gate_hidden": 13},  # d + h = 29: value columns padded to 32
        {"model_kwargs": {**TINY, "reg_tokens": 2, "qk_norm": True, "qkv_bias": False}},
    ],
    ids=[
        "default",
        "no-gate",
        "no-iq",
        "align-on-original",
        "wide-gate",
        "odd-gate",
        "reg-qk-norm",
    ],
)
def test_fused_equals_explicit_outputs_and_gradients(overrides: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused, criterion = build(tiny_cfg(**overrides))
    perturb_trainables(fused)
    explicit = copy.deepcopy(fused)
    batch = batch_for(fused.grid)
    assert all(layer._runs_fused() for layer in fused.interaction_layers)
    got, got_grads = loss_outputs_and_grads(fused, criterion, batch)
    with explicit_attention(explicit):
        assert not any(layer._runs_fused() for layer in explicit.interaction_layers)
        want, want_grads = loss_outputs_and_grads(explicit, criterion, batch)
    for name in ("logits", "vfm_cls", "agt_cls", "gates", "align_rows", "loss", "align"):
        if want[name] is None:
            assert got[name] is None, name
        else:
            assert torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-4), name
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-5, rtol=1e-4), name
    # The perturbation made the comparison meaningful: the interaction changed the logits.
    if overrides.get("interaction_queries", True):
        assert not torch.allclose(want["agt_cls"], want["vfm_cls"], atol=1e-3)


def test_fused_block_equals_eq_3_to_9_computed_by_hand() -> None:
    """Block 0 of a perturbed I-ViT against the paper's equations written out with the
    [C_AGT; C_VFM] concatenation and explicit softmaxes (no code of student.layers used)."""
    plain, ivit = build_pair(tiny_cfg())
    perturb_trainables(ivit)
    layer = ivit.vit.blocks[0].attn
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x = plain.norm_pre(plain._pos_embed(plain.patch_embed(images)))  # [B, N, C]
        x = plain.blocks[0].norm1(x)
        batch, tokens, dim = x.shape
        heads, d = 2, dim // 2

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, heads, d).transpose(1, 2)  # [B, H, N, d]

        qkv = plain.blocks[0].attn.qkv(x)
        q, k, v = (split(qkv[..., i * dim : (i + 1) * dim]) for i in range(3))
        q_int = split(x @ layer.interaction_q.weight.t() + layer.interaction_q.bias)
        c_vfm = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)  # [B, H, N, N]
        c_agt = torch.softmax(q_int @ k.transpose(-1, -2) / d**0.5, dim=-1)
        gate_in = torch.cat([c_agt, c_vfm], dim=-1)  # [B, H, N, 2N] (Eq. 5)
        fc1, fc2 = layer.gate.fc1, layer.gate.fc2
        hidden = F.gelu(gate_in @ fc1.weight.t() + fc1.bias)
        g = torch.sigmoid(hidden @ fc2.weight.t() + fc2.bias)  # [B, H, N, 2]
        c_f = g[..., :1] * c_agt + g[..., 1:] * c_vfm
        merged = (c_f @ v).transpose(1, 2).reshape(batch, tokens, dim)
        expected = plain.blocks[0].attn.proj(merged)
        assert layer._runs_fused()
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_fused_with_masks_and_recording_equals_explicit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused, _ = build(tiny_cfg())
    perturb_trainables(fused)
    explicit = copy.deepcopy(fused)
    images = torch.randn(2, 3, 32, 32)
    allowed = torch.rand(2, 1, 17, 17, generator=torch.Generator().manual_seed(3)) > 0.3
    allowed[..., 0] = True
    additive = torch.zeros(2, 1, 17, 17).masked_fill(~allowed, float("-inf"))
    for mask in (allowed, additive):
        with torch.no_grad(), fused._recording() as got:
            got_logits = fused.vit(images, attn_mask=mask)
        with torch.no_grad(), explicit_attention(explicit), explicit._recording() as want:
            want_logits = explicit.vit(images, attn_mask=mask)
        assert torch.allclose(got_logits, want_logits, atol=1e-5)
        for a, b in zip(got.agt_cls + got.vfm_cls, want.agt_cls + want.vfm_cls, strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_every_row_and_attention_dropout_keep_the_explicit_path() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every_row, _ = build(tiny_cfg(align_rows="all"))
        dropped, _ = build(tiny_cfg(model_kwargs={**TINY, "attn_drop_rate": 0.1}))
    with every_row._recording():
        assert not any(layer._runs_fused() for layer in every_row.interaction_layers)
    dropped.train()
    assert not any(layer._runs_fused() for layer in dropped.interaction_layers)
    dropped.eval()
    assert all(layer._runs_fused() for layer in dropped.interaction_layers)
