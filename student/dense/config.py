"""The detector around the I-ViT: Conditional DETR's size and loss weights (transformers'
ConditionalDetrConfig fields, under the same names)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DenseTask = Literal["detect", "segment"]


class DetrConfig(BaseModel):
    """Defaults are Conditional DETR's own (R50 recipe); the demo overrides them to a tiny size."""

    model_config = ConfigDict(extra="forbid")

    task: DenseTask = "detect"
    num_queries: int = Field(300, gt=0, description="object queries (Conditional DETR: 300)")
    d_model: int = Field(256, gt=0)
    encoder_layers: int = Field(6, ge=1)
    decoder_layers: int = Field(6, ge=1)
    attention_heads: int = Field(8, gt=0, description="encoder and decoder heads")
    ffn_dim: int = Field(2048, gt=0, description="encoder and decoder FFN width")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    auxiliary_loss: bool = Field(False, description="losses on every decoder layer")
    # Matcher costs and loss weights: the library's defaults (Conditional DETR paper); integers
    # because transformers' ConditionalDetrConfig types them so.
    class_cost: int = 2
    bbox_cost: int = 5
    giou_cost: int = 2
    cls_loss_coefficient: int = 2
    bbox_loss_coefficient: int = 5
    giou_loss_coefficient: int = 2
    mask_loss_coefficient: int = 1
    dice_loss_coefficient: int = 1
    focal_alpha: float = 0.25
    pyramid_channels: int = Field(
        64, gt=0, description="segment: channels of the upsampled levels the mask head's FPN reads"
    )
    max_detections: int = Field(100, gt=0, description="kept per image at evaluation (COCO: 100)")

    @model_validator(mode="after")
    def _mask_head_fits(self) -> DetrConfig:
        # the library's mask head groups d_model + heads channels into 8 GroupNorm groups
        if self.task == "segment" and (self.d_model + self.attention_heads) % 8:
            raise ValueError(
                f"DetrConfig: segmentation needs d_model + attention_heads divisible by 8, got "
                f"{self.d_model} + {self.attention_heads}"
            )
        if self.d_model % self.attention_heads:
            raise ValueError("DetrConfig: d_model must be a multiple of attention_heads")
        return self
