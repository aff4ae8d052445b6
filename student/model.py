"""The I-ViT (docs/maps.md): a timm ViT, frozen, whose every block attends through an
InteractionAttention; plus backbone loading and the parameter/FLOP summary.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from student.backbone_weights import (
    WeightsUnavailableError,
    download_hint,
    ensure_hub_weights,
    missing_file_error,
    timm_hub_weights,
)
from student.config import StudentConfig
from student.layers import InteractionAttention, InteractionRecord
from student.variants import init_gates, use_low_rank_queries


def timm_kwargs(cfg: StudentConfig) -> dict:
    """`timm.create_model` keywords beyond the name: the config's extras, classes, image size."""
    kwargs = dict(cfg.model_kwargs, num_classes=cfg.num_classes)
    if cfg.img_size is not None:
        kwargs["img_size"] = cfg.img_size
    return kwargs


def create_backbone(cfg: StudentConfig) -> VisionTransformer:
    """A timm ViT with `cfg.num_classes` outputs and the weights `cfg.weights` names.

    Loading goes through timm's own pretrained path (checkpoint_filter_fn, pos-embed resampling,
    classifier dropped when the class count differs) whether the source is a file or the hub.
    Built under a fixed seed so that the new head is the same in every process (resume relies
    on it), without disturbing the caller's RNG.
    """
    kwargs = timm_kwargs(cfg)
    if not timm.is_model(cfg.model):  # accepts pretrained tags (name.augreg_in21k_ft_in1k)
        raise ValueError(f"StudentConfig.model: unknown timm model {cfg.model!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vit = _create_with_weights(cfg, kwargs)
    if not isinstance(vit, VisionTransformer):
        raise TypeError(
            f"StudentConfig.model: {cfg.model!r} builds {type(vit).__name__}; the I-ViT needs a "
            "timm VisionTransformer"
        )
    return vit


def _create_with_weights(cfg: StudentConfig, kwargs: dict) -> nn.Module:
    if cfg.weights is not None and cfg.weights.lower() == "none":
        warnings.warn(
            f"WEIGHTS=none: {cfg.model} starts from RANDOM weights and stays frozen; results "
            "mean nothing beyond tests and the demo",
            stacklevel=3,
        )
        return timm.create_model(cfg.model, pretrained=False, **kwargs)
    if cfg.weights is not None:
        path = Path(cfg.weights)
        if not path.is_file():
            raise missing_file_error(cfg.model, path)
        try:
            return timm.create_model(
                cfg.model, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
        except (RuntimeError, KeyError, ValueError) as err:
            raise WeightsUnavailableError(
                f"StudentConfig.weights: {path} does not load into {cfg.model}: {err}"
            ) from err
    ensure_hub_weights(cfg.model, cfg.model_kwargs)  # offline: the local HF cache, or a clear error
    try:
        return timm.create_model(cfg.model, pretrained=True, **kwargs)
    except Exception as err:  # network, hub and cache errors all mean the same to the user
        hint = download_hint(cfg.model, timm_hub_weights(cfg.model, cfg.model_kwargs))
        raise WeightsUnavailableError(
            f"could not fetch pretrained weights for {cfg.model} through timm ({type(err).__name__}: "
            f"{err}). Without network, {hint}; "
            "WEIGHTS=none starts from random weights (tests and demo only)"
        ) from err


class IViT(nn.Module):
    """Frozen timm ViT + Interaction Queries + gates + a new trainable head."""

    def __init__(self, vit: VisionTransformer, cfg: StudentConfig) -> None:
        super().__init__()
        if cfg.aligns and vit.cls_token is None:
            raise ValueError(
                f"StudentConfig.model: {cfg.model} has no class token, but the alignment uses the "
                "CLS row of the attention; pick a ViT with class_token=True or alignment=False"
            )
        grid = vit.patch_embed.grid_size
        if grid[0] != grid[1]:
            raise ValueError(f"StudentConfig: the patch grid {grid} must be square to meet C_VLM")
        self.vit = vit
        self.cfg = cfg
        self.grid: int = grid[0]
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        num_tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
        for p in vit.parameters():
            p.requires_grad_(False)
        for block in vit.blocks:
            block.attn = InteractionAttention(block.attn, num_tokens, cfg)
        vit.head.requires_grad_(True)
        if cfg.train_backbone:  # paper Table 2's protocol: every weight trains
            vit.requires_grad_(True)
        if cfg.query_rank is not None:
            use_low_rank_queries(self.interaction_layers, cfg.query_rank)
        if cfg.gate_init is not None:
            init_gates(self.interaction_layers, cfg.gate_init)

    @property
    def img_size(self) -> int:
        return self.vit.patch_embed.img_size[0]

    @property
    def patch_size(self) -> int:
        return self.vit.patch_embed.patch_size[0]

    @property
    def interaction_layers(self) -> list[InteractionAttention]:
        return [block.attn for block in self.vit.blocks]

    @property
    def data_config(self) -> dict:
        """Input size, interpolation, mean and std the loader should normalize with."""
        config = timm.data.resolve_model_data_config(self.vit)
        # The pretrained cfg states the checkpoint's size; the built model may differ (img_size).
        return {**config, "input_size": (3, *self.vit.patch_embed.img_size)}

    def forward(
        self, x: torch.Tensor, with_interactions: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor | None]:
        """Logits [B, K]; with `with_interactions`, forward_with_interactions's dict (a flag of
        forward, not only a method, so that the call goes through a DDP wrapper)."""
        if with_interactions:
            return self.forward_with_interactions(x)
        return self.vit(x)  # [B, K]

    def forward_with_interactions(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Logits plus per-block CLS rows for the loss and the overlays.

        Returns logits [B, K]; vfm_cls [L, B, P]; agt_cls [L, B, P] or None; gates [L, B, 2]
        (mean g1, g2 over heads and rows) or None; align_rows: the rows the alignment
        constrains (agt_cls, or vfm_cls with align_on_original), None when nothing aligns.
        """
        with self._recording() as rec:
            logits = self.vit(x)  # [B, K]
        return {"logits": logits, **interaction_outputs(rec, self.cfg)}

    @contextlib.contextmanager
    def _recording(self) -> Iterator[InteractionRecord]:
        every_row = self.cfg.aligns and self.cfg.align_rows == "all"
        per_head = self.cfg.aligns and self.cfg.align_heads == "each"
        rec = InteractionRecord(
            num_prefix_tokens=self.num_prefix_tokens, every_row=every_row, per_head=per_head
        )
        layers = self.interaction_layers
        for layer in layers:
            layer.recorder = rec
        try:
            yield rec
        finally:
            for layer in layers:
                layer.recorder = None


def interaction_outputs(rec: InteractionRecord, cfg: StudentConfig) -> dict:
    """A finished recording as the outputs every I-ViT head shares: vfm_cls, agt_cls [L, B, P]
    (agt None without IQ), gates [L, B, 2] or None, and align_rows: what the alignment
    constrains (agt, or vfm with align_on_original), [L, B, P] for the CLS row, [L, B, N, P]
    with align_rows='all', [L, B, H, P] with align_heads='each'; None when nothing aligns."""
    vfm = torch.stack(rec.vfm_cls)  # [L, B, P]
    agt = torch.stack(rec.agt_cls) if rec.agt_cls else None  # [L, B, P]
    align = None
    if cfg.aligns:
        if rec.every_row:
            rows = rec.vfm_rows if cfg.align_on_original else rec.agt_rows
            align = torch.stack(rows)  # [L, B, N, P]
        elif rec.per_head:
            heads = rec.vfm_heads if cfg.align_on_original else rec.agt_heads
            align = torch.stack(heads)  # [L, B, H, P]: each head's CLS row meets the map
        else:
            align = vfm if cfg.align_on_original else agt  # [L, B, P]
    return {
        "vfm_cls": vfm,
        "agt_cls": agt,
        "gates": torch.stack(rec.gates) if rec.gates else None,  # [L, B, 2]
        "align_rows": align,
    }


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[None]:
    """Every InteractionAttention in `model` forms its [B, H, N, N] matrices while inside (the
    reference the fused SDPA path equals; see student/fused_attention.py)."""
    layers = [m for m in model.modules() if isinstance(m, InteractionAttention)]
    before = [layer.fused_attention for layer in layers]
    for layer in layers:
        layer.fused_attention = False
    try:
        yield
    finally:
        for layer, fused in zip(layers, before, strict=True):
            layer.fused_attention = fused


def count_forward_flops(model: nn.Module, img_size: int, batch: int = 1) -> int:
    """Forward FLOPs (2 per multiply-add) of one batch, from torch's FlopCounterMode.

    It counts matmuls and convolutions; softmax and norms are not counted, as in the usual ViT
    FLOP tables. SDPA runs on its math backend here because the CPU flash kernel is invisible to
    the counter, which would undercount the plain ViT's attention and flatter the ratio. The
    I-ViT is counted in its explicit form (Eq. 3-9 as written, the paper's count); the fused form
    that trains does the same products reordered, plus the zero padding of q and k.
    """
    x = torch.zeros(batch, 3, img_size, img_size)
    was_training = model.training
    model.eval()
    with (
        torch.no_grad(),
        sdpa_kernel(SDPBackend.MATH),
        explicit_attention(model),
        FlopCounterMode(display=False) as counter,
    ):
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def plain_vit(cfg: StudentConfig) -> VisionTransformer:
    """The same timm ViT without interaction parts (random weights: counts only)."""
    return timm.create_model(cfg.model, pretrained=False, **timm_kwargs(cfg))


def summarize(ivit: IViT, plain: nn.Module | None = None) -> str:
    """Trainable/total parameters and forward FLOPs of the I-ViT against the plain ViT."""
    plain = plain_vit(ivit.cfg) if plain is None else plain
    img_size = ivit.img_size
    it, itot = count_parameters(ivit)
    _, ptot = count_parameters(plain)
    iflops = count_forward_flops(ivit, img_size)
    pflops = count_forward_flops(plain, img_size)
    return (
        f"I-ViT {ivit.cfg.model} @ {img_size}px: trainable {it / 1e6:.3f}M of {itot / 1e6:.3f}M "
        f"params (plain ViT {ptot / 1e6:.3f}M, x{itot / ptot:.3f}); forward "
        f"{iflops / 1e9:.2f} GFLOPs vs {pflops / 1e9:.2f} (x{iflops / pflops:.3f})"
    )
