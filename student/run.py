"""One training run, from a resolved config file: what the train flow calls and torchrun launches.

    python -m student.run --config data/runs/<name>/config.json                 (one process)
    torchrun --standalone --nproc_per_node=2 -m student.run --config ...          (DDP)

The config is resolved by the caller (the train flow): shard folders, cache entries and the
class count are already fixed in it, so every process of a DDP job builds the same thing. What
differs between classification and dense tasks is behind student.task; this module is the same
for both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import UserError
from student.build import build_optimizer, build_scheduler
from student.distributed import cleanup, init_distributed, wrap_ddp
from student.engine import fit
from student.run_config import RunConfig, write_run_config
from student.run_state import LAST_CHECKPOINT, load_checkpoint
from student.task import task_for


def run_training(cfg: RunConfig) -> list[dict]:
    """Train (or resume) the run described by `cfg`; returns this call's metric rows."""
    task = task_for(cfg)
    context = init_distributed(device=cfg.device)
    try:
        model, criterion = task.build()
        if context.is_main:
            write_run_config(cfg)
            summary = task.summary(model)
            print(summary)
            (cfg.train.run_dir / "model.txt").write_text(summary + "\n")
        train_loader = task.loader(model, cfg.data.train_split, cfg.data.train_cache, True)
        val_loader = None
        if cfg.data.val_split:
            val_loader = task.loader(model, cfg.data.val_split, cfg.data.val_cache, False)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, len(train_loader))
        model.to(context.device)
        trained = model
        if context.world_size > 1:
            trained = wrap_ddp(model, task.ddp_unused_parameters)
        return fit(
            task, trained, criterion, optimizer, scheduler, train_loader, val_loader, cfg.train,
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
    """The metrics of a run's last checkpoint on `split` (top-1 per domain with the agreement
    of its maps with C_HUM, or COCO AP), written as `eval-<split>.json`. C_VLM comes from
    `cache_entry`, by default the run's own entry for that split."""
    cfg = RunConfig.model_validate_json((run_dir / "config.json").read_text())
    task = task_for(cfg)
    context = init_distributed(device=device)
    model, _ = task.build()
    load_checkpoint(run_dir / LAST_CHECKPOINT, model, restore_rng=False)
    if shard_dir is not None:
        task.cfg = cfg = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"shard_dir": shard_dir})}
        )
    if cache_entry is None and split == cfg.data.val_split:
        cache_entry = cfg.data.val_cache
    loader = task.loader(model, split, cache_entry, train=False)
    model.to(context.device)
    found = task.evaluate_run(
        model, loader, context.device, run_dir, split, cache_entry, human_maps
    )
    result = {"run": str(run_dir), "split": split, **found}
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
