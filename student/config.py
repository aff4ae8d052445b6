"""Typed configuration of the student stage (docs/maps.md): the I-ViT, its loss and its training.

`build.py` is the only place these meet the modules; every run writes the resolved config next
to its outputs, so a default here is part of every result it produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KlDirection = Literal["vlm||agt", "agt||vlm"]
AlignRows = Literal["cls", "all"]
AlignHeads = Literal["mean", "each"]


class StudentConfig(BaseModel):
    """The I-ViT and its criterion."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default="vit_small_patch16_224",
        description="any timm ViT name built by timm.models.vision_transformer (S/16 is the paper's Table 1 row)",
    )
    weights: str | None = Field(
        default=None,
        description=(
            "pretrained backbone: a local .safetensors/.pth/.bin file, None for timm's own loading "
            "(Hugging Face hub, needs network), or 'none' for random weights (tests and demo only)"
        ),
    )
    num_classes: int = Field(default=200, gt=0, description="new head; 200 = TinyImageNet")
    img_size: int | None = Field(
        default=None, description="override the model's input size; None keeps timm's default"
    )
    model_kwargs: dict = Field(
        default_factory=dict,
        description="extra timm.create_model kwargs (tiny test models: depth, embed_dim, patch_size...)",
    )
    # Ablation switches (paper Table 3).
    interaction_queries: bool = Field(
        default=True, description="add W_q' per block; False: C_F = C_VFM and no C_AGT exists"
    )
    gate: bool = Field(default=True, description="learned gates; False: fixed g1 = g2 = 0.5")
    alignment: bool = Field(
        default=True, description="False: lambda = 0 (no interaction constraint)"
    )
    align_on_original: bool = Field(
        default=False,
        description=(
            "align C_VFM (the original queries) to C_VLM instead of C_AGT; the q slice of the frozen "
            "qkv becomes a trainable copy, since a frozen query could not follow the constraint"
        ),
    )
    gate_hidden: int = Field(
        default=16,
        gt=0,
        description=(
            "gate FFN width; it runs on every (head, query row) with a 2N-long input, so its cost "
            "is B*H*N*2N*hidden: 16 keeps S/16 far below the paper's +17 % FLOPs"
        ),
    )
    query_rank: int | None = Field(
        default=None,
        gt=0,
        description=(
            "low-rank interaction query W_q' = W_q + A B (B zero at init, so the I-ViT still "
            "equals the ViT); None: a full trainable copy of W_q (the paper's)"
        ),
    )
    gate_init: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="gates start at g1 = this, g2 = 1 - this (0.05: near C_VFM); None: 0.5 / 0.5",
    )
    train_backbone: bool = Field(
        default=False,
        description="every backbone weight trains too (paper Table 2); False: frozen (Table 1)",
    )
    align_lambda: float = Field(default=1.0, ge=0.0, description="weight of the alignment term")
    align_last_blocks: int | None = Field(
        default=None,
        gt=0,
        description=(
            "align only the last k blocks' rows (the deepest ones, whose keys know the objects "
            "best); None aligns every block, as the paper does"
        ),
    )
    align_rows: AlignRows = Field(
        default="cls",
        description=(
            "'cls': only the CLS query's row meets C_VLM (paper Eq. 13); 'all': every query row "
            "(CLS and patches) meets the same C_VLM, a denser signal for the interaction queries"
        ),
    )
    align_heads: AlignHeads = Field(
        default="mean",
        description=(
            "'mean': the head mean of the CLS row meets C_VLM (docs/maps.md); 'each': every head's "
            "CLS row meets it on its own (the loss averages over heads)"
        ),
    )
    kl_direction: KlDirection = Field(
        default="vlm||agt",
        description=(
            "KL(C_VLM || C_AGT) is finite although C_VLM has exact zeros; 'agt||vlm' is the "
            "paper's literal Eq. 14 and needs kl_eps smoothing of C_VLM"
        ),
    )
    kl_eps: float = Field(
        default=1e-6, gt=0.0, description="smoothing of C_VLM for the literal agt||vlm direction"
    )
    seed: int = Field(default=0, description="seeds random init (WEIGHTS=none, new head, gates)")

    @field_validator("weights", mode="before")
    @classmethod
    def _empty_weights_is_hub(cls, weights: str | None) -> str | None:
        """An empty form field or make variable means timm's own loading, as None does."""
        return None if weights == "" else weights

    @model_validator(mode="after")
    def _alignment_needs_a_target(self) -> StudentConfig:
        if self.alignment and not self.interaction_queries and not self.align_on_original:
            raise ValueError(
                "StudentConfig: alignment=True needs something to align: with "
                "interaction_queries=False set align_on_original=True or alignment=False"
            )
        return self

    @model_validator(mode="after")
    def _one_kind_of_rows(self) -> StudentConfig:
        if self.align_heads == "each" and self.align_rows != "cls":
            raise ValueError(
                "StudentConfig: align_heads='each' aligns CLS rows: set align_rows='cls'"
            )
        return self

    @property
    def aligns(self) -> bool:
        """Whether the criterion has an alignment term at all."""
        return self.alignment and self.align_lambda > 0


class TrainConfig(BaseModel):
    """Optimisation and run outputs. Defaults follow timm's ViT fine-tuning recipe, scaled down."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=50, gt=0, description="paper Sec. 5.1.2: 50 epochs")
    lr: float = Field(
        default=1e-3, gt=0, description="only the small trainable part moves: a probe-like lr"
    )
    min_lr: float = Field(default=1e-6, ge=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0, description="linear warm-up, then cosine decay")
    warmup_lr: float = Field(default=1e-6, ge=0, description="lr at step 0 of the warm-up")
    steps_per_epoch: int | None = Field(
        default=None, description="needed for the schedule when the loader has no len()"
    )
    grad_clip: float | None = Field(default=1.0, description="max grad norm; None disables")
    amp: bool = Field(default=True, description="autocast on CUDA only; CPU always runs fp32")
    amp_dtype: Literal["bfloat16", "float16"] = Field(
        default="bfloat16", description="float16 adds a GradScaler"
    )
    seed: int = 0
    run_dir: Path = Field(default=Path("data/runs/default"))
    resume: bool = Field(
        default=True, description="continue from run_dir/checkpoint-last if present"
    )
    overlays: int = Field(default=4, ge=0, description="validation images drawn each epoch")
    eval_every: int = Field(default=1, gt=0)


class LoaderOptions(BaseModel):
    """How the student's loader batches and augments a split; the loader adds what the run
    resolves (shard folder, cache entry, image geometry, normalisation) in `LoaderConfig`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=64, gt=0, description="samples per batch and process")
    num_workers: int = Field(
        default=2, ge=0, description="decoding processes per loader (2 suits a 2-core machine)"
    )
    fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="seeded share of the train keys (1/10/50/100 %): exactly round(fraction x samples)",
    )
    crop_scale: tuple[float, float] = Field(
        default=(0.25, 1.0),
        description=(
            "RandomResizedCrop area range; above timm's 0.08 because a crop that misses the "
            "object leaves no C_VLM mass and so no alignment signal for that sample"
        ),
    )
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    eval_crop_fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="eval center crop of the short side; 1.0 because small images lose objects",
    )
    shuffle_buffer: int = Field(default=1000, ge=0, description="samples; 0 keeps shard order")
    skip_bad_rows: bool = Field(
        default=False,
        description=(
            "train on although some cached map rows are damaged (unreadable chunk, non-finite or "
            "unnormalized map): their samples get no map, and the run says how many; default: "
            "stop with one error naming them"
        ),
    )
    map_control: Literal["teacher", "shuffled", "uniform"] = Field(
        default="teacher",
        description=(
            "the maps' content control (student.map_controls): 'shuffled' gives each image "
            "another image's map of the same batch (none keeps its own), 'uniform' a uniform map"
        ),
    )
