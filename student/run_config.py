"""A training run's resolved config (written as its `config.json`) and what follows from it for
one split's loader. Shared by every task (student.task) and by the train flow that resolves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from student.config import LoaderOptions, StudentConfig, TrainConfig
from student.dense.config import DetrConfig
from student.loader import LoaderConfig


class DataConfig(LoaderOptions):
    """The run's splits and their map-cache entries (resolved by the train flow), with the
    loader options that every split of the run shares."""

    shard_dir: Path = Field(description="data/shards/<dataset>: the splits are subfolders")
    train_split: str = "train"
    val_split: str | None = Field("val", description="None: no validation")
    train_cache: str | None = Field(None, description="map-cache entry of the train split")
    val_cache: str | None = Field(None, description="entry of the val split (overlays only)")


class RunConfig(BaseModel):
    """Everything a run needs; written as `config.json` next to its outputs."""

    model_config = ConfigDict(extra="forbid")

    student: StudentConfig
    train: TrainConfig
    data: DataConfig
    device: str = Field("auto", description="auto | cpu | cuda")
    task: Literal["classify", "detect", "segment"] = Field(
        "classify", description="detect/segment: the I-ViT inside Conditional DETR (docs/dense.md)"
    )
    detr: DetrConfig | None = Field(None, description="the detector's size (dense tasks)")


def write_run_config(cfg: RunConfig) -> Path:
    """`config.json` in the run folder: the one place a run's config is written (the train
    flow writes it before torchrun starts; every run writes it again, identically, when it
    starts, so runs started from Python have it too)."""
    path = cfg.train.run_dir / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.model_dump_json(indent=2) + "\n")
    return path


def split_loader_config(
    cfg: RunConfig, model: Any, split: str, cache_entry: str | None, train: bool
) -> LoaderConfig:
    """The loader config of one split of the run, for `model`'s (an IViT or a dense student)
    input size, patch grid and normalisation. Evaluation always sees the whole split."""
    options = cfg.data.model_dump(include=set(LoaderOptions.model_fields))
    return LoaderConfig(
        **{**options, "fraction": cfg.data.fraction if train else 1.0},
        shard_dir=cfg.data.shard_dir, split=split, cache_entry=cache_entry,
        img_size=model.img_size, patch_size=model.patch_size, train=train, seed=cfg.train.seed,
        mean=tuple(model.data_config["mean"]), std=tuple(model.data_config["std"]),
    )  # fmt: skip
