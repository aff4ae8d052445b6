"""Loader benchmark: image-only streaming against streaming joined with cached C_VLM maps.

Both pipelines read the same shards and do the same decode, crop, flip, resize and normalize;
the joined one also reads each shard's committed maps (once per shard) and moves every map with
its image's view onto the student grid. Repetitions alternate between the two pipelines in one
run, so machine load hits both alike; the medians are compared.

    python -m bench.loader                       # synthetic sample shards + cache in a temp dir
    python -m bench.loader --shards data/shards/sample --split train --cache data/cache/<key>

Ends with exactly one line `RESULT join_overhead=<1 - joined/images_only>` (goal: < 0.05): the
median over repetitions of the ratio of two back-to-back passes (order alternating), which
cancels the load drift of a shared machine; best passes, medians and CPU-time figures come above.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import CacheEntry, CacheSpec, ShardMaps
from pipeline.datasets.generated import write_sample_dataset
from pipeline.shards.build import build_shards
from pipeline.shards.config import DEFAULT_SHARD_SIZE, ShardsConfig
from pipeline.shards.reader import iter_shard
from pipeline.shards.records import ShardIndex
from student.loader import LoaderConfig, build_loader
from student.maps import teacher_view_rect, uniform_overlap

TEACHER_GRID = 24  # LLaVA-1.5: 336 px view, 14 px patches
GEOMETRY = {"mode": "pad", "size": 336}


def box_map(boxes: list, width: int, height: int) -> np.ndarray:
    """A C_VLM stand-in: uniform over the boxes, on the teacher's padded 24x24 grid."""
    view = teacher_view_rect(GEOMETRY, width, height)
    out = np.zeros((TEACHER_GRID, TEACHER_GRID))
    for x0, y0, x1, y1 in boxes or [(0, 0, width, height)]:
        # the box as a one-cell grid: its share in each teacher row / column, times its size
        fy = uniform_overlap(y0, y1, 1, view.y0, view.y1, TEACHER_GRID)[:, 0] * (y1 - y0)  # [G]
        fx = uniform_overlap(x0, x1, 1, view.x0, view.x1, TEACHER_GRID)[:, 0] * (x1 - x0)  # [G]
        out += np.outer(fy, fx)  # [G, G] pixel areas
    return (out / out.sum()).astype(np.float32)


def synthetic_inputs(workdir: Path, images: int, shard_size: int) -> tuple[Path, str]:
    """Sample-dataset shards (64x64 JPEGs with true boxes) and a fully committed cache."""
    raw = workdir / "raw"
    write_sample_dataset(raw, train_per_class=max(1, images // 10), val_per_class=1)
    config = ShardsConfig(
        dataset="sample", split="train", root=raw, shards=workdir / "shards", shard_size=shard_size
    )
    index: ShardIndex = build_shards(config, progress=False).index
    split_dir = config.shard_dir()
    spec = CacheSpec(
        dataset=index.dataset,
        split=index.split,
        dataset_fingerprint=index.fingerprint,
        teacher={"model": "bench-box-maps"},
    )
    entry = CacheEntry.create_or_open(
        str(workdir / "cache"), spec, index, grid=TEACHER_GRID, geometry=GEOMETRY
    )
    for shard in index.shards:
        samples = list(iter_shard(split_dir / shard.name))
        c_vlm = np.stack(
            [box_map(s.record.boxes, s.record.width, s.record.height) for s in samples]
        )  # [n, G, G]
        entry.write_shard(
            shard.name,
            ShardMaps(
                keys=[s.key for s in samples],
                c_vlm=c_vlm,
                c_fore=c_vlm,
                c_back=np.zeros_like(c_vlm),
                valid=np.ones(len(samples), bool),
                reason=[""] * len(samples),
                answer=["bench"] * len(samples),
                fg_correct=np.ones(len(samples), np.int8),
            ),
        )
    return split_dir, entry.path


def one_pass(loader) -> tuple[int, float, float, int]:
    """(samples, wall seconds, CPU seconds of this process, samples with a valid map)."""
    samples = valid = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in loader:
        samples += len(batch["key"])
        valid += int(batch["map_valid"].sum())
    return samples, time.perf_counter() - wall, time.process_time() - cpu, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="shard dir (dataset or split folder)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--cache", help="cache entry path/URL (<root>/<cache_key>)")
    parser.add_argument("--images", type=int, default=2000, help="synthetic images")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="synthetic shard size (the project default)",
    )
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="0 measures the per-sample work")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--eval", action="store_true", help="center view instead of train views")
    args = parser.parse_args()
    if (args.shards is None) != (args.cache is None):
        parser.error("--shards and --cache go together (or neither: synthetic inputs)")
    torch.set_num_threads(1)  # the loader's work is per-sample Python + PIL, one core each

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        if args.shards is None:
            shard_dir, cache = synthetic_inputs(Path(tmp), args.images, args.shard_size)
        else:
            shard_dir, cache = args.shards, args.cache

        def loader(entry: str | None):
            return build_loader(LoaderConfig(shard_dir=shard_dir, cache_entry=entry, split=args.split, img_size=args.img_size, patch_size=args.patch_size, batch_size=args.batch_size, train=not args.eval, num_workers=args.workers, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))  # fmt: skip

        # Built once, like a training run's loader; each repetition is one epoch of it.
        pipelines = {"images_only": loader(None), "joined": loader(cache)}
        one_pass(pipelines["joined"])  # warm-up: page cache, imports, zarr codecs
        wall = {name: [] for name in pipelines}
        cpu = {name: [] for name in pipelines}
        for rep in range(args.reps):
            order = list(pipelines) if rep % 2 == 0 else list(pipelines)[::-1]
            for name in order:
                pipelines[name].set_epoch(rep)
                samples, seconds, cpu_seconds, valid = one_pass(pipelines[name])
                wall[name].append(samples / seconds)
                cpu[name].append(samples / cpu_seconds)
                if name == "joined" and rep == 0:
                    print(f"joined pass: {samples} samples, {valid} with a valid map")

    # Each repetition's two passes ran back to back: their ratio cancels slow load drifts.
    pair_ratios = [j / i for j, i in zip(wall["joined"], wall["images_only"], strict=True)]
    rate = {name: statistics.median(values) for name, values in wall.items()}
    best = {name: max(values) for name, values in wall.items()}
    cpu_rate = {name: statistics.median(values) for name, values in cpu.items()}
    for name in pipelines:
        print(
            f"{name:12s} best {best[name]:7.1f} samples/s, median {rate[name]:7.1f} "
            f"(of {args.reps}, worst {min(wall[name]):.1f}); "
            f"median {cpu_rate[name]:7.1f} samples per CPU-second"
        )
    print("per-repetition joined/images_only: " + " ".join(f"{r:.3f}" for r in pair_ratios))
    print(
        f"overhead: best passes {1 - best['joined'] / best['images_only']:.4f}, median wall "
        f"{1 - rate['joined'] / rate['images_only']:.4f}, median CPU time "
        f"{1 - cpu_rate['joined'] / cpu_rate['images_only']:.4f}, median of pairs "
        f"{1 - statistics.median(pair_ratios):.4f}"
    )
    per_sample_us = (1 / rate["joined"] - 1 / rate["images_only"]) * 1e6
    print(f"join cost per sample (medians): {per_sample_us:.1f} us")
    # The headline is the median of back-to-back pairs (their order alternates): on a shared
    # machine the load drifts between passes, and a pair sees nearly the same load.
    print(f"RESULT join_overhead={1 - statistics.median(pair_ratios):.4f}")


if __name__ == "__main__":
    main()
