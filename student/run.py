"""One training run, from a resolved config file: what the train flow calls and torchrun launches.

    python -m student.run --config data/runs/<name>/config.json                 (one process)
    torchrun --standalone --nproc_per_node=2 -m student.run --config ...          (DDP)

The config is resolved by the caller (the train flow): shard folders, cache entries and the
class count are already fixed in it, so every process of a DDP job builds the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import UserError
from student.build import build, build_optimizer, build_scheduler
from student.checkpoint import LAST_CHECKPOINT, load_checkpoint
from student.config import LoaderOptions, StudentConfig, TrainConfig
from student.dense.config import DetrConfig
from student.distributed import cleanup, init_distributed, wrap_ddp
from student.engine import evaluate, fit
from student.human_alignment import HumanAlignment, load_human_maps, split_records
from student.loader import LoaderConfig, build_loader
from student.model import IViT, summarize
from student.plots import plot_human_alignment


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
        "classify", description="detect/segment: the I-ViT inside Conditional DETR (DESIGN 9)"
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


def _loader(cfg: RunConfig, model: IViT, split: str, cache: str | None, train: bool):
    return build_loader(split_loader_config(cfg, model, split, cache, train))


def run_training(cfg: RunConfig) -> list[dict]:
    """Train (or resume) the run described by `cfg`; returns this call's metric rows."""
    if cfg.task != "classify":
        from student.dense.run import run_dense_training

        return run_dense_training(cfg)
    context = init_distributed(device=cfg.device)
    try:
        model, criterion = build(cfg.student)
        if context.is_main:
            write_run_config(cfg)
            summary = summarize(model)
            print(summary)
            (cfg.train.run_dir / "model.txt").parent.mkdir(parents=True, exist_ok=True)
            (cfg.train.run_dir / "model.txt").write_text(summary + "\n")
        train_loader = _loader(cfg, model, cfg.data.train_split, cfg.data.train_cache, True)
        val_loader = None
        if cfg.data.val_split:
            val_loader = _loader(cfg, model, cfg.data.val_split, cfg.data.val_cache, False)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, len(train_loader))
        model.to(context.device)
        trained = wrap_ddp(model) if context.world_size > 1 else model
        return fit(
            trained, criterion, optimizer, scheduler, train_loader, val_loader, cfg.train,
            context.device,
        )  # fmt: skip
    finally:
        cleanup()


def evaluate_run(
    run_dir: Path,
    split: str,
    shard_dir: Path | None = None,
    device: str = "auto",
    cache_entry: str | None = None,
    human_maps: Path | None = None,
) -> dict:
    """Top-1 (and per-domain accuracy with its variance) of a run's last checkpoint on `split`,
    and the cosine of C_VFM, C_VLM and C_AGT to C_HUM (`human_maps`; without it the box mask
    stands in) with its bar chart. C_VLM comes from `cache_entry`, by default the run's own
    entry for that split."""
    cfg = RunConfig.model_validate_json((run_dir / "config.json").read_text())
    if cfg.task != "classify":
        from student.dense.run import evaluate_dense_run

        return evaluate_dense_run(cfg, run_dir, split, shard_dir, device, cache_entry)
    context = init_distributed(device=device)
    model, _ = build(cfg.student)
    load_checkpoint(run_dir / LAST_CHECKPOINT, model, restore_rng=False)
    if shard_dir is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"shard_dir": shard_dir})})
    if cache_entry is None and split == cfg.data.val_split:
        cache_entry = cfg.data.val_cache
    loader = _loader(cfg, model, split, cache_entry, train=False)
    human = HumanAlignment(
        split_records(loader.split_dir), model.grid, loader.config.eval_crop_fraction,
        load_human_maps(human_maps) if human_maps else None,
        str(human_maps) if human_maps else None,
    )  # fmt: skip
    model.to(context.device)
    result = evaluate(model, loader, context.device, human=human)
    result = {"run": str(run_dir), "split": split, **result}
    result["human_alignment"] = {**human.result(), "c_vlm_entry": cache_entry}
    figure = plot_human_alignment(
        result["human_alignment"], run_dir / f"human-alignment-{split}.png",
        f"{run_dir.name} on {split}: cosine to {human.reference}"
        + (f" ({Path(human_maps).name})" if human_maps else ""),
    )  # fmt: skip
    result["human_alignment"]["figure"] = str(figure)
    (run_dir / f"eval-{split}.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m student.run", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="a RunConfig JSON file")
    args = parser.parse_args(argv)
    cfg = RunConfig.model_validate_json(args.config.read_text())
    try:
        rows = run_training(cfg)
    except UserError as error:  # under torchrun: each rank's finding as one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    if rows:
        print(json.dumps(rows[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
