"""The I-ViT as the backbone of transformers' Conditional DETR (docs/dense.md).

`ViTFeatureEncoder` takes the place of `ConditionalDetrConvEncoder` (`model.model.backbone`):
same call (pixel_values, pixel_mask) -> [(feature_map, mask), ...], same
`intermediate_channel_sizes`, so the library's input projection, encoder, decoder, matcher,
losses and mask head run unchanged around it. Detection reads one level, the ViT's patch grid;
segmentation also gets three learned 2x upsamplings of it (ViTDet's simple pyramid), because the
mask head's FPN needs finer levels than a plain ViT has.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import (
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    ConditionalDetrForSegmentation,
    ResNetConfig,
)
from transformers.models.conditional_detr.modeling_conditional_detr import (
    ConditionalDetrMaskHeadSmallConv,
)

from student.config import StudentConfig
from student.dense.config import DetrConfig
from student.model import IViT, interaction_outputs


def _placeholder_backbone(levels: int) -> ResNetConfig:
    """What the library builds before we replace it with the I-ViT: tiny, so it costs nothing,
    with as many levels as the head built around it expects (segmentation's FPN reads four)."""
    return ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 8, 8, 8],
        depths=[1, 1, 1, 1],
        out_features=[f"stage{i}" for i in range(5 - levels, 5)],
    )


class ViTFeatureEncoder(nn.Module):
    """A (frozen) ViT's patch tokens as DETR feature maps; records the I-ViT's CLS rows."""

    def __init__(self, body: IViT | VisionTransformer, levels: int, pyramid_channels: int) -> None:
        super().__init__()
        self.body = body
        width = self.vit.embed_dim
        self.grid = self.vit.patch_embed.grid_size[0]
        # Coarse to fine: each learned 2x step feeds the next finer FPN level of the mask head.
        self.upsample = nn.ModuleList()
        channels = width
        for _ in range(levels - 1):
            self.upsample.append(
                nn.Sequential(
                    nn.ConvTranspose2d(channels, pyramid_channels, kernel_size=2, stride=2),
                    nn.GroupNorm(8 if pyramid_channels % 8 == 0 else 1, pyramid_channels),
                    nn.GELU(),
                )
            )
            channels = pyramid_channels
        # finest first, as ConditionalDetrConvEncoder lists ResNet stages
        self.intermediate_channel_sizes = [pyramid_channels] * (levels - 1) + [width]
        self.record = False
        self.interactions: dict[str, torch.Tensor | None] = {}

    @property
    def vit(self) -> VisionTransformer:
        return self.body.vit if isinstance(self.body, IViT) else self.body

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """forward_features [B, N, C]; with `record`, the CLS rows land in `interactions`."""
        if not (self.record and isinstance(self.body, IViT)):
            self.interactions = {}
            return self.vit.forward_features(pixel_values)
        with self.body._recording() as rec:
            tokens = self.vit.forward_features(pixel_values)  # [B, N, C]
        self.interactions = interaction_outputs(rec, self.body.cfg)
        return tokens

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        tokens = self.tokens(pixel_values)  # [B, N, C]
        patches = tokens[:, self.vit.num_prefix_tokens :]  # [B, P, C]
        b, _, c = patches.shape
        feature = patches.transpose(1, 2).reshape(b, c, self.grid, self.grid)  # [B, C, g, g]
        levels = [feature]
        for step in self.upsample:
            levels.append(step(levels[-1]))  # [B, c', 2^k g, 2^k g]
        out = []
        for level in reversed(levels):  # finest first
            mask = nn.functional.interpolate(pixel_mask[None].float(), size=level.shape[-2:])
            out.append((level, mask.to(torch.bool)[0]))  # [B, h, w]
        return out


def detr_config(detr: DetrConfig, num_labels: int) -> ConditionalDetrConfig:
    return ConditionalDetrConfig(
        backbone_config=_placeholder_backbone(4 if detr.task == "segment" else 1),
        num_labels=num_labels,
        num_queries=detr.num_queries,
        d_model=detr.d_model,
        encoder_layers=detr.encoder_layers,
        decoder_layers=detr.decoder_layers,
        encoder_attention_heads=detr.attention_heads,
        decoder_attention_heads=detr.attention_heads,
        encoder_ffn_dim=detr.ffn_dim,
        decoder_ffn_dim=detr.ffn_dim,
        dropout=detr.dropout,
        auxiliary_loss=detr.auxiliary_loss,
        class_cost=detr.class_cost,
        bbox_cost=detr.bbox_cost,
        giou_cost=detr.giou_cost,
        cls_loss_coefficient=detr.cls_loss_coefficient,
        bbox_loss_coefficient=detr.bbox_loss_coefficient,
        giou_loss_coefficient=detr.giou_loss_coefficient,
        mask_loss_coefficient=detr.mask_loss_coefficient,
        dice_loss_coefficient=detr.dice_loss_coefficient,
        focal_alpha=detr.focal_alpha,
    )


class DenseStudent(nn.Module):
    """Conditional DETR (detection or segmentation) whose backbone is the I-ViT."""

    def __init__(
        self, body: IViT | VisionTransformer, detr: DetrConfig, num_labels: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.task = detr.task
        self.detr_cfg = detr
        config = detr_config(detr, num_labels)
        segment = detr.task == "segment"
        # Seeded, as the classifier's head: two builds of one config are identical (resume).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if segment:
                self.detector = ConditionalDetrForSegmentation(config)
                core = self.detector.conditional_detr.model
            else:
                self.detector = ConditionalDetrForObjectDetection(config)
                core = self.detector.model
            encoder = ViTFeatureEncoder(body, 4 if segment else 1, detr.pyramid_channels)
            core.backbone = encoder
            core.input_projection = nn.Conv2d(encoder.vit.embed_dim, config.d_model, kernel_size=1)
            if segment:
                self.detector.mask_head = ConditionalDetrMaskHeadSmallConv(
                    input_channels=config.d_model + config.encoder_attention_heads,
                    fpn_channels=encoder.intermediate_channel_sizes[::-1][-3:],
                    hidden_size=config.d_model,
                    activation_function=config.activation_function,
                )
        self._core = [core]  # a plain list: the encoder is registered once, inside the detector

    @property
    def encoder(self) -> ViTFeatureEncoder:
        return self._core[0].backbone

    @property
    def body(self) -> IViT | VisionTransformer:
        return self.encoder.body

    @property
    def img_size(self) -> int:
        return self.encoder.vit.patch_embed.img_size[0]

    @property
    def patch_size(self) -> int:
        return self.encoder.vit.patch_embed.patch_size[0]

    @property
    def grid(self) -> int:
        return self.encoder.grid

    @property
    def cfg(self) -> StudentConfig | None:
        return self.body.cfg if isinstance(self.body, IViT) else None

    @property
    def data_config(self) -> dict:
        if isinstance(self.body, IViT):
            return self.body.data_config
        import timm

        return timm.data.resolve_model_data_config(self.body)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: list[dict] | None = None,
        with_interactions: bool = False,
    ) -> dict:
        """{"detr": the library's output (loss and loss_dict when `labels` are given), and with
        `with_interactions` the I-ViT's CLS rows: vfm_cls, agt_cls [L, B, P], gates,
        align_rows}. A flag of forward, not a method, so it goes through a DDP wrapper."""
        self.encoder.record = with_interactions
        try:
            out = self.detector(pixel_values=pixel_values, labels=labels)
            interactions = dict(self.encoder.interactions)
        finally:
            self.encoder.record = False
            self.encoder.interactions = {}
        return {"detr": out, "align_rows": None, **interactions}
