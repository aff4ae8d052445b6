"""I-ViT invariants: it starts as the frozen ViT, only its new parts learn, each ablation switch
changes exactly what it names, and its cost is what hand counting says."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from ivit_fixtures import block0_attention, build_pair
from safetensors.torch import save_file

from student.build import build
from student.config import StudentConfig
from student.layers import InteractionAttention
from student.model import (
    IViT,
    WeightsUnavailableError,
    count_forward_flops,
    count_parameters,
    create_backbone,
)

torch.set_num_threads(1)

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}


def tiny_cfg(**overrides) -> StudentConfig:
    base = {
        "model": "vit_tiny_patch16_224",
        "weights": "none",
        "num_classes": 5,
        "img_size": 32,
        "model_kwargs": dict(TINY),
    }
    base.update(overrides)
    return StudentConfig(**base)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"model_kwargs": {**TINY, "reg_tokens": 2, "qk_norm": True, "qkv_bias": False}},
        {
            "model_kwargs": {**TINY, "class_token": False, "global_pool": "avg"},
            "alignment": False,
        },
    ],
    ids=["cls", "reg-tokens-qk-norm", "no-cls-avg-pool"],
)
def test_init_logits_equal_the_frozen_vit(overrides: dict) -> None:
    plain, ivit = build_pair(tiny_cfg(**overrides))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = plain(images)
        assert torch.allclose(ivit(images), expected, atol=1e-5)
        outputs = ivit.forward_with_interactions(images)
    assert torch.allclose(outputs["logits"], expected, atol=1e-5)
    # W_q' = W_q and zero-initialized gates: C_AGT == C_VFM and g1 = g2 = 0.5 at init.
    assert torch.allclose(outputs["agt_cls"], outputs["vfm_cls"], atol=1e-6)
    assert torch.allclose(outputs["gates"], torch.full_like(outputs["gates"], 0.5))


def test_recorded_cls_row_matches_hand_computed_attention() -> None:
    plain, ivit = build_pair(tiny_cfg())
    images = torch.randn(2, 3, 32, 32)
    attention = block0_attention(plain, images)  # [B, H, N, N]
    expected = attention[:, :, 0, 1:].mean(dim=1)  # [B, P] CLS row over patches, head mean
    with torch.no_grad():
        rows = ivit.forward_with_interactions(images)["vfm_cls"]  # [L, B, P]
    assert rows.shape == (2, 2, 16)
    assert torch.allclose(rows[0], expected, atol=1e-6)


def test_only_interaction_parts_and_head_receive_gradients() -> None:
    cfg = tiny_cfg()
    model, criterion = build_quiet(cfg)
    batch = tiny_batch(model.grid)
    criterion(model.forward_with_interactions(batch["image"]), batch)["loss"].backward()
    expected = {
        f"vit.blocks.{i}.attn.{part}.{w}"
        for i in range(2)
        for part in ("interaction_q", "gate.fc1", "gate.fc2")
        for w in ("weight", "bias")
    } | {"vit.head.weight", "vit.head.bias"}
    assert trainable_names(model) == expected
    for name, p in model.named_parameters():
        if name in expected:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert model.vit.blocks[0].attn.interaction_q.weight.grad.abs().sum() > 0
    assert model.vit.blocks[0].attn.gate.fc2.weight.grad.abs().sum() > 0


def build_quiet(cfg: StudentConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(cfg)


def tiny_batch(grid: int, batch: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    c_vlm = torch.rand(batch, grid, grid, generator=g)
    c_vlm[:, 0, :] = 0.0  # C_VLM has exact zeros
    return {
        "image": torch.randn(batch, 3, 32, 32, generator=g),
        "label": torch.randint(0, 5, (batch,), generator=g),
        "c_vlm": c_vlm / c_vlm.sum(dim=(1, 2), keepdim=True),
        "map_valid": torch.ones(batch, dtype=torch.bool),
        "key": [f"k{i}" for i in range(batch)],
    }


def gate_names(depth: int = 2) -> set[str]:
    return {
        f"vit.blocks.{i}.attn.gate.{fc}.{w}"
        for i in range(depth)
        for fc in ("fc1", "fc2")
        for w in ("weight", "bias")
    }


def query_names(part: str, depth: int = 2) -> set[str]:
    return {f"vit.blocks.{i}.attn.{part}.{w}" for i in range(depth) for w in ("weight", "bias")}


def test_ablation_no_gate_removes_only_the_gates() -> None:
    default, _ = build_quiet(tiny_cfg())
    model, criterion = build_quiet(tiny_cfg(gate=False))
    assert trainable_names(model) == trainable_names(default) - gate_names()
    outputs = model.forward_with_interactions(tiny_batch(model.grid)["image"])
    assert outputs["gates"] is None and outputs["agt_cls"] is not None
    assert criterion.alignment


def test_ablation_no_alignment_removes_only_the_loss_term() -> None:
    default, _ = build_quiet(tiny_cfg())
    model, criterion = build_quiet(tiny_cfg(alignment=False))
    assert trainable_names(model) == trainable_names(default)
    batch = tiny_batch(model.grid)
    outputs = model.forward_with_interactions(batch["image"])
    assert outputs["align_rows"] is None and outputs["gates"] is not None
    losses = criterion(outputs, batch)
    assert losses["align"].item() == 0.0
    assert torch.equal(losses["loss"], losses["ce"])


def test_ablation_no_interaction_queries_is_the_frozen_vit_with_a_head() -> None:
    cfg = tiny_cfg(interaction_queries=False, alignment=False)
    plain, model = build_pair(cfg)
    assert trainable_names(model) == {"vit.head.weight", "vit.head.bias"}
    images = tiny_batch(model.grid)["image"]
    with torch.no_grad():
        outputs = model.forward_with_interactions(images)
        assert torch.allclose(model(images), plain(images), atol=1e-5)
    assert outputs["agt_cls"] is None and outputs["gates"] is None
    with pytest.raises(ValueError, match="align_on_original"):
        tiny_cfg(interaction_queries=False)


def test_ablation_align_on_original_trains_a_query_copy_and_aligns_c_vfm() -> None:
    default, _ = build_quiet(tiny_cfg())
    model, criterion = build_quiet(tiny_cfg(align_on_original=True))
    assert trainable_names(model) == trainable_names(default) | query_names("original_q")
    batch = tiny_batch(model.grid)
    outputs = model.forward_with_interactions(batch["image"])
    assert outputs["align_rows"] is outputs["vfm_cls"]
    criterion(outputs, batch)["align"].backward()  # the alignment alone
    last = model.vit.blocks[-1].attn
    assert last.original_q.weight.grad.abs().sum() > 0
    # C_AGT is no longer constrained: the last block's W_q' only acts after that block's C_VFM,
    # so the alignment term sends it nothing (earlier blocks' W_q' feed later C_VFM rows).
    assert last.interaction_q.weight.grad is None
    # Starts from the frozen queries, so the logits still equal the frozen ViT's.
    plain, ivit = build_pair(tiny_cfg(align_on_original=True))
    with torch.no_grad():
        assert torch.allclose(ivit(batch["image"]), plain(batch["image"]), atol=1e-5)


def test_parameter_and_flop_counts_match_hand_counts() -> None:
    plain, ivit = build_pair(tiny_cfg())
    dim, heads, depth, hidden, classes = 32, 2, 2, 16, 5
    tokens = (32 // 8) ** 2 + 1
    per_block = (dim * dim + dim) + (2 * tokens * hidden + hidden) + (hidden * 2 + 2)
    trainable, total = count_parameters(ivit)
    assert trainable == depth * per_block + dim * classes + classes
    assert total == count_parameters(plain)[1] + depth * per_block
    extra_per_block = 2 * (
        tokens * dim * dim  # W_q'
        + heads * tokens * tokens * (dim // heads)  # Pq' Pk^T
        + heads * tokens * (2 * tokens) * hidden  # gate fc1 on [C_AGT; C_VFM]
        + heads * tokens * hidden * 2  # gate fc2
    )
    assert count_forward_flops(ivit, 32) - count_forward_flops(plain, 32) == depth * extra_per_block


def test_weights_from_a_local_safetensors_file(tmp_path) -> None:
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10, **TINY)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = IViT(create_backbone(tiny_cfg(weights=str(path))), tiny_cfg())
    loaded = model.vit.state_dict()
    for name, value in source.state_dict().items():
        if name.startswith("head."):
            assert loaded[name].shape[0] == 5  # a new head for the dataset's classes
        else:
            assert torch.equal(loaded[name], value), name
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("vit.pos"))


def test_missing_weights_file_and_offline_hub_say_how_to_supply_weights(
    tmp_path, monkeypatch
) -> None:
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        create_backbone(tiny_cfg(weights=str(tmp_path / "absent.safetensors")))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", offline)
    monkeypatch.setattr("timm.models._builder.load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="WEIGHTS=/path/to"):
        create_backbone(tiny_cfg(weights=None))
    with pytest.warns(UserWarning, match="RANDOM weights"):
        create_backbone(tiny_cfg(weights="none"))


def test_alignment_without_class_token_is_a_clear_error() -> None:
    cfg = tiny_cfg(model_kwargs={**TINY, "class_token": False, "global_pool": "avg"})
    with pytest.raises(ValueError, match="class token"):
        build_quiet(cfg)


def test_every_block_attends_through_interaction_attention() -> None:
    model, _ = build_quiet(tiny_cfg())
    assert all(isinstance(b.attn, InteractionAttention) for b in model.vit.blocks)
    gate = model.vit.blocks[0].attn.gate
    rows = torch.rand(1, 2, 17, 9)  # a 9-token row from some other image size
    with pytest.raises(ValueError, match="img_size"):
        gate(rows, rows)


def test_interaction_queries_learn_to_follow_the_teacher_map() -> None:
    """Alignment alone, two images: the KL to C_VLM falls well below its start (the frozen
    ViT's own attention), so the gradient path through W_q' works end to end."""
    torch.manual_seed(0)
    model, criterion = build_quiet(tiny_cfg())
    batch = tiny_batch(model.grid, batch=2)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    history = []
    for _ in range(40):
        align = criterion(model(batch["image"], with_interactions=True), batch)["align"]
        optimizer.zero_grad()
        align.backward()
        optimizer.step()
        history.append(align.item())
    assert history[-1] < 0.6 * history[0]


def test_attention_masks_act_as_in_timm() -> None:
    plain, ivit = build_pair(tiny_cfg())
    images = torch.randn(2, 3, 32, 32)
    allowed = torch.rand(2, 1, 17, 17, generator=torch.Generator().manual_seed(3)) > 0.3
    allowed[..., 0] = True  # every query keeps at least the CLS key
    additive = torch.zeros(2, 1, 17, 17).masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        expected = plain(images, attn_mask=allowed)
        assert not torch.allclose(expected, plain(images), atol=1e-4)  # the mask matters
        assert torch.allclose(ivit.vit(images, attn_mask=allowed), expected, atol=1e-5)
        assert torch.allclose(ivit.vit(images, attn_mask=additive), expected, atol=1e-5)
