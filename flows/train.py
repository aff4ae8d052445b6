"""The training flow: shards + cached maps -> an I-ViT run under data/runs/<name>/.

    python -m flows.train --dataset sample --epochs 10          (what `make train` runs)

Resolving inputs (shards, the matching cache entry, the class count) happens here; the training
itself is `student.run`, in this process or under torchrun when `nproc` > 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import flows  # noqa: F401  (Prefect settings)
from flows.cli_args import add_model_arguments, add_preset_argument, parse_model
from flows.dense_entries import check_entry_for_task, fits_task
from flows.inputs import check_shards_obtainable
from flows.ops.command import prefect_session, run_command
from flows.ops.orphans import record_process
from flows.progress import RunProgress, epochs_done, watching_epochs
from flows.retries import retry_unless_user_error
from pipeline.cache import list_entries, open_entry
from pipeline.cache.integrity import require_sound_entry
from pipeline.cache.spec import teacher_brief
from pipeline.errors import AmbiguousInputError, MissingInputError
from pipeline.shards.build import ensure_shards
from pipeline.shards.config import ShardsConfig
from pipeline.shards.integrity import check_shard_files
from pipeline.shards.records import ShardIndex
from student.backbone_weights import check_weights_source
from student.run import run_training
from student.run_config import DataConfig, RunConfig, write_run_config
from student.train_params import TrainParams


def _matching_entry(
    params: TrainParams, index: ShardIndex, required: bool, teacher: dict | None = None
) -> str | None:
    """The cache entry holding maps for exactly these shards (matched by dataset fingerprint);
    with `teacher`, only entries made by that teacher spec (the val split follows the train
    split's teacher, so a run never mixes two teachers' maps)."""
    if params.cache_entry and index.split == params.train_split:
        check_entry_for_task(open_entry(params.cache_entry), params.task)
        return params.cache_entry
    matches = [
        e
        for e in list_entries(params.cache_root)
        if e.spec.dataset_fingerprint == index.fingerprint
        and (teacher is None or e.spec.teacher == teacher)
        and fits_task(e, params.task)
    ]
    if len(matches) == 1:
        return matches[0].path
    where = f"{params.dataset}/{index.split} (fingerprint {index.fingerprint[:16]}) under {params.cache_root}"
    if not matches:
        if required:
            raise MissingInputError(
                f"no map-cache entry for {where}; run `make extract DATASET={params.dataset} "
                f"SPLIT={index.split}` first, or train without alignment (--no-alignment)"
            )
        return None
    if not required:
        # A run that does not align reads maps only for its overlays: with several teachers'
        # entries to choose from (a shared cache), it takes none rather than failing.
        return None
    listing = "\n  ".join(f"{e.path}  ({teacher_brief(e.manifest['spec'])})" for e in matches)
    raise AmbiguousInputError(
        f"several cache entries match {where} (one per teacher); choose one with "
        f"CACHE_ENTRY=<path> (--cache-entry):\n  {listing}"
    )


def _check_maps(entry_path: str, index: ShardIndex, skip_bad_rows: bool) -> None:
    """Every committed shard of the entry read and checked before training starts (seconds for
    a whole split: three chunks a shard), so damage stops the run before hours of work."""
    damage = require_sound_entry(open_entry(entry_path), index, skip_bad_rows)
    if damage:
        rows = sum(len(d.bad_rows) for d in damage)
        get_run_logger().warning(
            "--skip-bad-rows: skipping %d bad map row(s) in %d shard(s) of %s (first: %s); "
            "their samples train without a map",
            rows, len(damage), entry_path, damage[0].describe(),
        )  # fmt: skip


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def resolve_run(params: TrainParams) -> str:
    """Shards (written if missing), cache entries and class count -> the run's config.json."""
    logger = get_run_logger()
    indexes = {}
    for split in filter(None, [params.train_split, params.val_split]):
        shards = ShardsConfig(
            dataset=params.dataset,
            split=split,
            shards=Path(params.shards_root),
            shard_size=params.shard_size,
        )
        outcome = ensure_shards(shards)
        # Once per file per run, here in the process the user started: before torchrun's ranks
        # or any loader worker exist, so a damaged shard is one line, not a worker traceback.
        check_shard_files(outcome.out_dir, outcome.index)
        indexes[split] = outcome.index
    train_index = indexes[params.train_split]
    train_cache = _matching_entry(params, train_index, required=params.student.aligns)
    val_cache = None
    if params.val_split and train_cache is not None:
        teacher = open_entry(train_cache).spec.teacher
        val_cache = _matching_entry(params, indexes[params.val_split], False, teacher)
    for split, cache in ((params.train_split, train_cache), (params.val_split, val_cache)):
        if cache is not None and split is not None:
            _check_maps(cache, indexes[split], params.data.skip_bad_rows)
    run_dir = Path(params.runs_root) / params.run_name()
    config = RunConfig(
        student=params.student.model_copy(update={"num_classes": len(train_index.classes)}),
        train=params.train.model_copy(update={"run_dir": run_dir}),
        data=DataConfig(
            **params.data.model_dump(), shard_dir=Path(params.shards_root) / params.dataset,
            train_split=params.train_split, val_split=params.val_split, train_cache=train_cache,
            val_cache=val_cache,
        ),
        device=params.device,
        task=params.task,
        detr=None if params.task == "classify" else params.detr_config(),
    )  # fmt: skip
    write_run_config(config)
    logger.info("run %s: train maps %s", run_dir, train_cache or "none (no alignment)")
    return str(run_dir)


@task
def train_run(run_dir: str, nproc: int) -> list[dict]:
    """Train in this process, or under torchrun with `nproc` processes (DDP); the epochs done
    show as the run's progress artifact (the console has the per-epoch bars)."""
    config_path = Path(run_dir) / "config.json"
    config = RunConfig.model_validate_json(config_path.read_text())
    metrics = Path(run_dir) / "metrics.jsonl"
    progress = RunProgress(
        config.train.epochs, f"train {Path(run_dir).name}", "epoch", "train-progress", console=False
    )
    progress.reach(epochs_done(metrics))  # a resumed run starts where it stopped
    with watching_epochs(metrics, progress):
        if nproc == 1:
            rows = run_training(config)
        else:
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", "student.run", "--config", str(config_path),
            ]  # fmt: skip
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    progress.finish()
    return rows


@task
def publish_run(run_dir: str, rows: list[dict]) -> dict:
    run = Path(run_dir)
    last = rows[-1] if rows else {}
    overlays = sorted((run / "overlays").glob("*.png"))
    lines = [
        f"# Run `{run.name}`",
        f"- folder: `{run}`",
        f"- epochs this call: {len(rows)}",
        *(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in last.items()),
        f"- curves: `{run / 'curves.png'}`",
        f"- latest overlays: `{overlays[-1] if overlays else 'none'}`",
    ]
    create_markdown_artifact("\n".join(lines), key="train-summary", description="training run")
    return {"run_dir": str(run), "last": last, "curves": str(run / "curves.png"),
            "overlays": str(overlays[-1]) if overlays else None}  # fmt: skip


@flow(name="train-ivit", log_prints=True, on_running=[record_process])
def train_flow(params: TrainParams) -> dict:
    """Train an I-ViT on shards joined with their cached teacher maps."""
    run_dir = resolve_run(params)
    rows = train_run(run_dir, params.nproc)
    return publish_run(run_dir, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train", description=__doc__)
    add_model_arguments(parser, TrainParams)
    add_preset_argument(parser)
    parser.add_argument(
        "--config-only",
        action="store_true",
        help="write the run's config.json, print its path and exit (for torchrun on many nodes)",
    )
    args = parser.parse_args(argv)
    params = parse_model(TrainParams, args)
    for split in filter(None, [params.train_split, params.val_split]):
        check_shards_obtainable(params.dataset, split, Path(params.shards_root))
    # Before the flow: the backbone's weights can be had (offline: from the local HF cache).
    # WeightsUnavailableError is a user error: run_command prints it as one line.
    student = params.student
    check_weights_source(student.model, student.weights, student.model_kwargs)
    if args.config_only:
        print(Path(resolve_run(params)) / "config.json")
        return 0
    with prefect_session():
        result = train_flow(params)
    print(json.dumps(result["last"]))
    print(f"run folder: {result['run_dir']}")
    print(f"curves:     {result['curves']}")
    print(f"overlays:   {result['overlays']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
