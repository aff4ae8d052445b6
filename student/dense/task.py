"""The dense tasks (student.task): the I-ViT as the backbone of Conditional DETR, for detection
or instance segmentation, with COCO metrics (docs/dense.md)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from student.dense.build import build_dense, build_plain_detector
from student.dense.config import DetrConfig
from student.dense.engine import detr_forward, evaluate_dense, save_dense_overlays, summarize_dense
from student.dense.loader import build_dense_loader
from student.dense.model import DenseStudent
from student.dense.plots import plot_dense_curves
from student.run_config import RunConfig, split_loader_config


class DenseTask:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @cached_property
    def detr(self) -> DetrConfig:
        detr = self.cfg.detr or DetrConfig()
        return DetrConfig.model_validate({**detr.model_dump(), "task": self.cfg.task})

    @property
    def ddp_unused_parameters(self) -> bool:
        # Conditional DETR's query_scale is skipped by the first decoder layer, so with one
        # decoder layer it gets no gradient.
        return self.detr.decoder_layers == 1

    def build(self) -> tuple[nn.Module, nn.Module]:
        return build_dense(self.cfg.student, self.detr)

    def loader(
        self, model: DenseStudent, split: str, cache: str | None, train: bool
    ) -> Iterable[dict]:
        config = split_loader_config(self.cfg, model, split, cache, train)
        loader = build_dense_loader(config, masks=self.cfg.task == "segment")
        self.class_names = loader.index.classes
        return loader

    forward = staticmethod(detr_forward)
    evaluate = staticmethod(evaluate_dense)
    curves = staticmethod(plot_dense_curves)

    def overlays(self, model: DenseStudent, batch: dict, out_path: Path, count: int) -> Path | None:
        return save_dense_overlays(model, batch, out_path, count, self.class_names)

    def summary(self, model: DenseStudent) -> str:
        return summarize_dense(model, build_plain_detector(self.cfg.student, self.detr))

    def evaluate_run(
        self, model: DenseStudent, loader: Any, device: torch.device, run_dir: Path, split: str,
        cache_entry: str | None, human_maps: Path | None,
    ) -> dict:  # fmt: skip
        """COCO metrics, overlays of predictions with C_VLM and C_AGT, and the model summary."""
        result = evaluate_dense(model, loader, device)
        first = next(iter(loader), None)
        overlay = None
        if first is not None:
            overlay = self.overlays(model, first, run_dir / f"eval-{split}-overlays.png", 6)
        summary = self.summary(model)
        print(summary)
        (run_dir / "model.txt").write_text(summary + "\n")
        return {"task": self.cfg.task, **result,
                "overlays": None if overlay is None else str(overlay), "model": summary}  # fmt: skip
