"""One dense training run or evaluation from a resolved RunConfig (student.run dispatches here
when `task` is detect or segment)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from student.build import build_optimizer, build_scheduler
from student.checkpoint import LAST_CHECKPOINT, load_checkpoint
from student.dense.build import build_dense, build_plain_detector
from student.dense.config import DetrConfig
from student.dense.engine import (
    evaluate_dense,
    save_dense_overlays,
    summarize_dense,
    train_one_epoch_dense,
)
from student.dense.loader import build_dense_loader
from student.dense.model import DenseStudent
from student.dense.plots import plot_dense_curves
from student.distributed import cleanup, init_distributed, wrap_ddp
from student.engine import fit
from student.run import split_loader_config, write_run_config

if TYPE_CHECKING:
    from student.run import RunConfig


def _detr(cfg: RunConfig) -> DetrConfig:
    detr = cfg.detr or DetrConfig()
    return DetrConfig.model_validate({**detr.model_dump(), "task": cfg.task})


def _loader(cfg: RunConfig, model: DenseStudent, split: str, cache: str | None, train: bool):
    config = split_loader_config(cfg, model, split, cache, train)
    return build_dense_loader(config, masks=cfg.task == "segment")


def write_model_summary(model: DenseStudent, cfg: RunConfig, run_dir: Path) -> str:
    summary = summarize_dense(model, build_plain_detector(cfg.student, _detr(cfg)))
    print(summary)
    path = Path(run_dir) / "model.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary + "\n")
    return summary


def run_dense_training(cfg: RunConfig) -> list[dict]:
    context = init_distributed(device=cfg.device)
    try:
        model, criterion = build_dense(cfg.student, _detr(cfg))
        if context.is_main:
            write_run_config(cfg)
            write_model_summary(model, cfg, cfg.train.run_dir)
        train_loader = _loader(cfg, model, cfg.data.train_split, cfg.data.train_cache, True)
        val_loader = None
        if cfg.data.val_split:
            val_loader = _loader(cfg, model, cfg.data.val_split, cfg.data.val_cache, False)
        classes = train_loader.index.classes
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, len(train_loader))
        model.to(context.device)
        # Conditional DETR's query_scale is skipped by the first decoder layer, so with one
        # decoder layer it gets no gradient; DDP must not wait for it.
        unused = _detr(cfg).decoder_layers == 1
        trained = wrap_ddp(model, unused) if context.world_size > 1 else model
        return fit(
            trained, criterion, optimizer, scheduler, train_loader, val_loader, cfg.train,
            context.device, epoch_fn=train_one_epoch_dense, evaluate_fn=evaluate_dense,
            overlay_fn=partial(save_dense_overlays, class_names=classes),
            curves_fn=plot_dense_curves,
        )  # fmt: skip
    finally:
        cleanup()


def evaluate_dense_run(
    cfg: RunConfig,
    run_dir: Path,
    split: str,
    shard_dir: Path | None,
    device: str,
    cache_entry: str | None = None,
) -> dict:
    """COCO metrics of the run's last checkpoint on `split` -> eval-<split>.json, overlays of
    predictions, C_VLM and C_AGT, and model.txt (params/FLOPs against the plain detector)."""
    context = init_distributed(device=device)
    model, _ = build_dense(cfg.student, _detr(cfg))
    load_checkpoint(run_dir / LAST_CHECKPOINT, model, restore_rng=False)
    if shard_dir is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"shard_dir": shard_dir})})
    cache = cache_entry or (cfg.data.val_cache if split == cfg.data.val_split else None)
    loader = _loader(cfg, model, split, cache, train=False)
    model.to(context.device)
    result = evaluate_dense(model, loader, context.device)
    first = next(iter(loader), None)
    overlay = None
    if first is not None:
        overlay = save_dense_overlays(
            model, first, run_dir / f"eval-{split}-overlays.png", 6, loader.index.classes
        )
    summary = write_model_summary(model, cfg, run_dir)
    result = {
        "run": str(run_dir), "split": split, "task": cfg.task, **result,
        "overlays": None if overlay is None else str(overlay), "model": summary,
    }  # fmt: skip
    (run_dir / f"eval-{split}.json").write_text(json.dumps(result, indent=1))
    return result
