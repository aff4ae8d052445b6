"""Detection on sample-coco with and without the C_VLM alignment, at equal budget.

Both runs: the same I-ViT inside the same Conditional DETR, the same shards, maps, seed, epochs
and batches; only `alignment` differs (the paper's "w/ C_VLM" / "w/o C_VLM" rows, Tables 6-7).
The maps are the baseline `box` teacher's (ground-truth boxes rasterized on the teacher grid,
TEACHER=box): maps known to be right, so the bench asks whether aligning the interaction queries
to good maps helps the detector, without the tiny teacher's random-weight noise. The frozen
backbone is the stand-in foundation ViT of `make dense-backbone` (experiments/backbones/dense_backbone.py),
as the paper's detectors sit on a pretrained ViT. Overheads are Table 6's columns: parameters and
forward FLOPs of the I-ViT detector against the same detector on the plain ViT.

    python -m bench.dense [--epochs 12] [--seeds 0 1 2] [--weights data/models/dense-vit.safetensors]

Ends with exactly one line (mAPs are means over the seeds):
`RESULT map_with=<mAP> map_without=<mAP> param_overhead=<fraction> flops_overhead=<fraction>`.
A 4-block, 96-wide ViT on 400 generated images measures the plumbing and the direction of the effect
at best; the paper's figures need COCO and an ImageNet ViT.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from experiments.presets import load_preset
from pipeline.paths import cache_root, runs_root, shards_root

# The demo's detector (experiments/presets/demo-detect.yaml, also read by `make demo-detect`).
PRESET = load_preset("demo-detect")
DETR = PRESET["detr"]
VIT = {k: PRESET[k] for k in ("model", "img_size", "model_kwargs")}
LR, BATCH, WARMUP_EPOCHS = PRESET["lr"], PRESET["batch"], PRESET["warmup_epochs"]


def extract(shards_root: str, cache_root: str) -> dict[str, str]:
    """The box teacher's maps of sample-coco train and val: {split: entry path}."""
    from flows.extract_flow import run_extract
    from flows.extract_params import ExtractParams

    common = dict(dataset="sample-coco", shards_root=shards_root, shard_size=100, teacher="box",
                  quant="none", dtype="float32", cache_root=cache_root, previews=0)  # fmt: skip
    return {s: run_extract(ExtractParams(split=s, **common))["path"] for s in ("train", "val")}


def run(alignment: bool, seed: int, entries: dict[str, str], args: argparse.Namespace) -> dict:
    """Train one variant in this process, then COCOeval it on val."""
    from pipeline.shards.records import read_index
    from student.config import TrainConfig
    from student.dense.config import DetrConfig
    from student.run import evaluate_run, run_training
    from student.run_config import DataConfig, RunConfig

    shard_dir = Path(args.shards_root) / "sample-coco"
    classes = read_index(shard_dir / "train").classes
    name = f"bench-dense-{'with' if alignment else 'without'}-s{seed}"
    run_dir = Path(args.runs_root) / name
    config = RunConfig(
        student=_student(alignment, len(classes), seed, args.weights),
        train=TrainConfig(epochs=args.epochs, lr=LR, warmup_epochs=WARMUP_EPOCHS, seed=seed,
                          run_dir=run_dir, resume=False, overlays=0, eval_every=args.epochs),
        data=DataConfig(shard_dir=shard_dir, train_cache=entries["train"],
                        val_cache=entries["val"], batch_size=BATCH, num_workers=1),
        device="cpu", task="detect", detr=DetrConfig(**DETR),
    )  # fmt: skip
    if run_dir.exists():
        for stale in run_dir.glob("*"):  # equal budget: every variant trains from scratch
            if stale.is_file():
                stale.unlink()
    run_training(config)
    return evaluate_run(run_dir, "val", device="cpu")


def _student(alignment: bool, num_classes: int, seed: int, weights: str):
    from student.config import StudentConfig

    return StudentConfig(
        **VIT, weights=weights, alignment=alignment, num_classes=num_classes, seed=seed
    )


def overheads(weights: str) -> dict:
    from student.dense.build import build_dense, build_plain_detector
    from student.dense.config import DetrConfig
    from student.dense.engine import dense_overheads

    cfg, detr = _student(True, 6, 0, weights), DetrConfig(**DETR)
    return dense_overheads(build_dense(cfg, detr)[0], build_plain_detector(cfg, detr))


def spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main(argv: list[str] | None = None) -> int:
    from experiments.backbones.dense_backbone import DEFAULT_OUT

    parser = argparse.ArgumentParser(prog="python -m bench.dense", description=__doc__)
    parser.add_argument("--shards-root", default=str(shards_root()))
    parser.add_argument("--cache-root", default=str(cache_root()))
    parser.add_argument("--runs-root", default=str(runs_root()))
    parser.add_argument("--weights", default=str(DEFAULT_OUT),
                        help="frozen backbone (make dense-backbone); 'none': random")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    if args.weights != "none" and not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights}: no such file; run `make dense-backbone` first")
    warnings.filterwarnings("ignore", message="WEIGHTS=none")
    entries = extract(args.shards_root, args.cache_root)
    maps = {True: [], False: []}
    for seed in args.seeds:
        for alignment in (True, False):
            start, cpu = time.perf_counter(), _cpu_seconds()
            result = run(alignment, seed, entries, args)
            metrics = {k: round(v, 4) for k, v in result.items() if k.startswith("bbox_")}
            print(f"{'with' if alignment else 'without'} C_VLM (seed {seed}, {args.epochs} epochs, "
                  f"{time.perf_counter() - start:.0f} s wall, {_cpu_seconds() - cpu:.0f} s CPU): "
                  f"{json.dumps(metrics)}", flush=True)  # fmt: skip
            maps[alignment].append(result["bbox_mAP"])
    cost = overheads(args.weights)
    print(f"mAP over seeds {args.seeds}: with {spread(maps[True])}, without {spread(maps[False])}")
    print(f"params {cost['params']} vs plain {cost['plain_params']}; "
          f"FLOPs {cost['flops']} vs plain {cost['plain_flops']}")  # fmt: skip
    print(
        f"RESULT map_with={statistics.mean(maps[True]):.4f} "
        f"map_without={statistics.mean(maps[False]):.4f} "
        f"param_overhead={cost['param_overhead']:.6f} flops_overhead={cost['flops_overhead']:.6f}"
    )
    return 0


def _cpu_seconds() -> float:
    """This process and its finished children (the loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
