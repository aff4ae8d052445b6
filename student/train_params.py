"""What a training run is asked: the train flow's parameters (its Prefect form and command line)
and an experiment member's. Below the flows, so experiment specs validate their members against
it without importing a flow."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from pipeline.paths import cache_root, runs_root, shards_root
from pipeline.sections import SectionedParams
from pipeline.shards.config import DEFAULT_SHARD_SIZE
from student.config import LoaderOptions, StudentConfig, TrainConfig
from student.dense.config import DetrConfig


class TrainParams(SectionedParams):
    """A training run; Prefect renders it as the deployment's form, one section per concern.

    Every field of `student`, `train` and `data` is also settable by its flat name (`epochs`,
    `align_lambda`, `batch` for `data.batch_size`, `seed` for both seeds): the command line's
    flags and the experiment specs' keys."""

    model_config = ConfigDict(extra="forbid")
    flat_sections: ClassVar[tuple[str, ...]] = ("student", "train", "data")
    flat_renames: ClassVar[dict[str, tuple[str, str]]] = {"batch": ("data", "batch_size")}
    # Resolved by the flow: the class count from the shards, the folder from `run`.
    flat_hidden: ClassVar[frozenset[str]] = frozenset({"student.num_classes", "train.run_dir"})

    dataset: str = Field("sample", description="a name from data/registry.json")
    task: Literal["classify", "detect", "segment"] = Field(
        "classify", description="detect/segment: the I-ViT as Conditional DETR's backbone"
    )
    train_split: str = "train"
    val_split: str | None = Field("val", description="None: no validation")
    shards_root: str = Field(str(shards_root()))
    shard_size: int = Field(
        DEFAULT_SHARD_SIZE, ge=1, description="used only when shards must be written"
    )
    cache_root: str = Field(str(cache_root()), description="local path or s3:// URL")
    cache_entry: str | None = Field(None, description="an entry to use when the root has several")
    run: str | None = Field(None, description="run name under data/runs; default: a new one")
    runs_root: str = Field(str(runs_root()))
    nproc: int = Field(1, ge=1, description="processes (GPUs) under torchrun; 1: in-process")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    student: StudentConfig = Field(
        default_factory=StudentConfig, description="the I-ViT, its ablation switches and loss"
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation")
    data: LoaderOptions = Field(default_factory=LoaderOptions, description="batches and views")
    detr: DetrConfig = Field(
        default_factory=DetrConfig,
        description="detect/segment: Conditional DETR's size and loss weights (JSON on the CLI)",
    )

    def detr_config(self) -> DetrConfig:
        """The detector for this task (validated again: segmentation has its own constraints)."""
        return DetrConfig.model_validate({**self.detr.model_dump(), "task": self.task})

    def run_name(self) -> str:
        return self.run or f"{self.dataset}-{self.student.model}-{time.strftime('%Y%m%d-%H%M%S')}"
