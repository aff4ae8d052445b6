"""The classification task (student.task): the I-ViT with its linear head, top-1, and the
agreement of its maps with human (or box-mask) attention at evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from student.build import build
from student.engine import classifier_forward, evaluate, save_interaction_overlays
from student.human_alignment import HumanAlignment, load_human_maps, split_records
from student.loader import build_loader
from student.model import IViT, summarize
from student.plots import plot_curves, plot_human_alignment
from student.run_config import RunConfig, split_loader_config


class ClassifyTask:
    """`cfg` is needed to build and to load data; the training loop's parts (forward,
    evaluate, figures) need none, so tests may drive fit with `ClassifyTask()`."""

    ddp_unused_parameters = False

    def __init__(self, cfg: RunConfig | None = None) -> None:
        self.cfg = cfg

    def build(self) -> tuple[nn.Module, nn.Module]:
        return build(self.cfg.student)

    def loader(self, model: IViT, split: str, cache: str | None, train: bool) -> Iterable[dict]:
        return build_loader(split_loader_config(self.cfg, model, split, cache, train))

    forward = staticmethod(classifier_forward)
    evaluate = staticmethod(evaluate)
    overlays = staticmethod(save_interaction_overlays)
    curves = staticmethod(plot_curves)
    summary = staticmethod(summarize)

    def evaluate_run(
        self, model: IViT, loader: Any, device: torch.device, run_dir: Path, split: str,
        cache_entry: str | None, human_maps: Path | None,
    ) -> dict:  # fmt: skip
        """Top-1 (per domain, with its variance) and the cosine of C_VFM, C_VLM and C_AGT to
        C_HUM (`human_maps`; without it the box mask stands in), with its bar chart."""
        human = HumanAlignment(
            split_records(loader.split_dir), model.grid, loader.config.eval_crop_fraction,
            load_human_maps(human_maps) if human_maps else None,
            str(human_maps) if human_maps else None,
        )  # fmt: skip
        result = evaluate(model, loader, device, human=human, per_sample=True)
        result["human_alignment"] = {**human.result(), "c_vlm_entry": cache_entry}
        figure = plot_human_alignment(
            result["human_alignment"], run_dir / f"human-alignment-{split}.png",
            f"{run_dir.name} on {split}: cosine to {human.reference}"
            + (f" ({Path(human_maps).name})" if human_maps else ""),
        )  # fmt: skip
        result["human_alignment"]["figure"] = str(figure)
        return result
