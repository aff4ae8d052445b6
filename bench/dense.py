"""Detection on sample-coco with and without the C_VLM alignment, at equal budget.

Both runs: the same tiny I-ViT inside the same Conditional DETR, the same shards, maps, seed,
epochs and batches; only `alignment` differs (the paper's "w/ C_VLM" / "w/o C_VLM" rows,
Tables 6-7). The maps are the tiny teacher's dense-prompt maps (Eq. 12) with box overlays: no
baseline `box` teacher exists in this tree yet. Overheads are Table 6's columns: parameters and
forward FLOPs of the I-ViT detector against the same detector on the plain ViT.

    python -m bench.dense [--epochs 12] [--seed 0]

Ends with exactly one line:
`RESULT map_with=<mAP> map_without=<mAP> param_overhead=<fraction> flops_overhead=<fraction>`.
A tiny random-weight backbone on 400 generated images measures the plumbing and the direction
of the effect at best; the paper's figures need COCO and a pretrained ViT.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipeline.paths import data_dir

DETR = {"num_queries": 12, "d_model": 64, "encoder_layers": 1, "decoder_layers": 2,
        "attention_heads": 4, "ffn_dim": 128, "dropout": 0.0}  # fmt: skip
VIT = {"model": "vit_tiny_patch16_224", "weights": "none", "img_size": 64,
       "model_kwargs": {"patch_size": 8, "depth": 4}}  # fmt: skip


def extract(shards_root: str, cache_root: str) -> str:
    """The tiny teacher's dense maps of sample-coco train and val; returns the train entry."""
    from flows.extract_entry import entry_location
    from flows.extract_flow import run_extract
    from flows.extract_params import ExtractParams

    common = dict(dataset="sample-coco", shards_root=shards_root, shard_size=100, teacher="tiny",
                  quant="4bit", dtype="float32", cache_root=cache_root, previews=0)  # fmt: skip
    for split in ("train", "val"):
        run_extract(ExtractParams(split=split, **common))
    return entry_location(ExtractParams(split="train", **common))


def run(alignment: bool, entry: str, args: argparse.Namespace) -> dict:
    """Train one variant in this process, then COCOeval it on val."""
    from flows.train import TrainParams, _matching_entry
    from pipeline.shards.records import read_index
    from student.config import TrainConfig
    from student.dense.config import DetrConfig
    from student.run import DataConfig, RunConfig, evaluate_run, run_training

    shard_dir = Path(args.shards_root) / "sample-coco"
    train_index = read_index(shard_dir / "train")
    params = TrainParams(dataset="sample-coco", task="detect", cache_root=args.cache_root,
                         cache_entry=entry)  # fmt: skip
    val_entry = _matching_entry(
        params, read_index(shard_dir / "val"), False, teacher=_teacher(entry)
    )
    name = f"bench-dense-{'with' if alignment else 'without'}-s{args.seed}"
    run_dir = Path(args.runs_root) / name
    config = RunConfig(
        student=_student(alignment, len(train_index.classes), args.seed),
        train=TrainConfig(epochs=args.epochs, lr=1e-3, warmup_epochs=0.5, seed=args.seed,
                          run_dir=run_dir, resume=False, overlays=0, eval_every=args.epochs),
        data=DataConfig(shard_dir=shard_dir, train_cache=entry, val_cache=val_entry,
                        batch_size=16, num_workers=1),
        device="cpu", task="detect", detr=DetrConfig(**DETR),
    )  # fmt: skip
    if run_dir.exists():
        for stale in run_dir.glob("*"):  # equal budget: every variant trains from scratch
            if stale.is_file():
                stale.unlink()
    run_training(config)
    return evaluate_run(run_dir, "val", device="cpu")


def _teacher(entry: str) -> dict:
    from pipeline.cache import open_entry

    return open_entry(entry).spec.teacher


def _student(alignment: bool, num_classes: int, seed: int):
    from student.config import StudentConfig

    return StudentConfig(**VIT, alignment=alignment, num_classes=num_classes, seed=seed)


def overheads() -> dict:
    from student.dense.build import build_dense, build_plain_detector
    from student.dense.config import DetrConfig
    from student.dense.engine import dense_overheads

    cfg, detr = _student(True, 6, 0), DetrConfig(**DETR)
    return dense_overheads(build_dense(cfg, detr)[0], build_plain_detector(cfg, detr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dense", description=__doc__)
    parser.add_argument("--shards-root", default=str(data_dir() / "shards"))
    parser.add_argument("--cache-root", default=str(data_dir() / "cache"))
    parser.add_argument("--runs-root", default=str(data_dir() / "runs"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="WEIGHTS=none")
    entry = extract(args.shards_root, args.cache_root)
    results = {a: run(a, entry, args) for a in (True, False)}
    cost = overheads()
    for alignment, result in results.items():
        metrics = {k: round(v, 4) for k, v in result.items() if k.startswith("bbox_")}
        print(f"{'with' if alignment else 'without'} C_VLM (seed {args.seed}, {args.epochs} "
              f"epochs): {json.dumps(metrics)}")  # fmt: skip
    print(f"params {cost['params']} vs plain {cost['plain_params']}; "
          f"FLOPs {cost['flops']} vs plain {cost['plain_flops']}")  # fmt: skip
    print(
        f"RESULT map_with={results[True]['bbox_mAP']:.4f} "
        f"map_without={results[False]['bbox_mAP']:.4f} "
        f"param_overhead={cost['param_overhead']:.6f} flops_overhead={cost['flops_overhead']:.6f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
