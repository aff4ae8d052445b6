"""What differs between a classifier run and a dense (detection, segmentation) run, behind one
interface; the rest (epochs, resume, checkpoints, metrics, DDP, the eval file) is shared by
student.engine.fit and student.run. `task_for(cfg)` is the one place a run's `task` is read."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from student.classify import ClassifyTask
from student.dense.task import DenseTask
from student.engine import LoopTask
from student.run_config import RunConfig


class Task(LoopTask, Protocol):
    cfg: RunConfig | None
    # DDP must not wait for parameters that get no gradient (Conditional DETR's query_scale
    # with one decoder layer).
    ddp_unused_parameters: bool

    def build(self) -> tuple[nn.Module, nn.Module]:
        """(model, criterion) from the run's student config."""

    def loader(
        self, model: nn.Module, split: str, cache: str | None, train: bool
    ) -> Iterable[dict]:
        """One split of the run, sized for `model` (its input size, patch grid, normalisation)."""

    def summary(self, model: nn.Module) -> str:
        """Parameters and FLOPs against the same model without interactions (model.txt)."""

    def evaluate_run(
        self, model: nn.Module, loader: Any, device: torch.device, run_dir: Path, split: str,
        cache_entry: str | None, human_maps: Path | None,
    ) -> dict:  # fmt: skip
        """The eval file's content: the metrics and, per task, its figures and human alignment."""


def task_for(cfg: RunConfig) -> Task:
    """The run's task: the classifier, or the I-ViT inside Conditional DETR."""
    return ClassifyTask(cfg) if cfg.task == "classify" else DenseTask(cfg)
