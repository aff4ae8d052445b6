"""Does the student learn from correct maps? sample-shift, where the right map is known.

    python -m bench.science                       (what `make bench-science` runs)

sample-shift's background names the class 95 % of the time in train and val and is independent
of it in test_shift; the box teacher's map covers exactly the evidence (the shape). On a frozen
backbone that knows shapes and backgrounds apart (`make backbone`), at equal budget, over seeds:

  ceiling    the ViT head trained on train_indep (no shortcut): what the features allow
  vit        the baseline: the same frozen backbone, only its head trained (on train)
  ivit-box   the I-ViT aligned to TEACHER=box maps
  control    the same I-ViT (queries, gates, head) without the alignment: parameters, no maps
  ivit-tiny  the I-ViT aligned to the tiny offline LLaVA's maps (noise: a wrong teacher)

Before reading accuracy, a map-fitting curve: the alignment KL per epoch of the box I-ViT beside
the KL of a uniform map and of the frozen attention, at several lambdas (can the queries fit the
maps at all?). Then a sweep (lambda, learning rate) with one seed. Everything runs through the
project's own code: shards and the box/tiny cache entries via the extract flow, batches via the
student loader (maps resampled to the student's grid), the I-ViT, its criterion, optimizer,
schedule and training/eval loops (student.build, student.engine), held in memory so that every
variant sees exactly the same batches. Ends with one line:

RESULT vit_shift=<top-1> ivit_shift=<top-1> gain=<points> control_gain=<points> std=<largest std> ceiling=<top-1>
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.science_plots import plot_map_fitting, sweep_label
from experiments.backbones import backbone as bb
from pipeline.datasets.shift import CORRELATION, write_shift_dataset
from pipeline.paths import bench_dir
from pipeline.shards.build import ensure_shards
from pipeline.shards.config import ShardsConfig
from student.build import build, build_optimizer, build_scheduler
from student.config import StudentConfig, TrainConfig
from student.engine import evaluate, train_one_epoch
from student.loader import LoaderConfig, build_loader
from student.loss import kl_divergence, renormalize

# A loaded 2-core machine can take longer than Prefect's 20 s to start its ephemeral server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
DATASET = "sample-shift"
SPLITS = ("train", "val", "test_shift", "train_indep")
MEAN = STD = (0.5, 0.5, 0.5)  # timm's ViT normalization, as the backbone was trained


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def extract_entry(teacher: str, split: str, shards_root: Path, cache_root: Path) -> str:
    """The cache entry of `teacher` on one split (written once; found afterwards)."""
    from flows.extract_flow import run_extract
    from flows.extract_params import ExtractParams

    params = ExtractParams(
        dataset=DATASET, split=split, shards_root=str(shards_root), cache_root=str(cache_root),
        teacher=teacher, quant="none", dtype="float32", previews=0, shard_size=1000,
    )  # fmt: skip
    return run_extract(params)["path"]


def load_split(shards_root: Path, split: str, entry: str | None) -> list[dict]:
    """Every batch of a split, in order, through the student loader (no augmentation)."""
    config = LoaderConfig(
        shard_dir=shards_root / DATASET, cache_entry=entry, split=split, img_size=bb.IMG_SIZE,
        patch_size=bb.MODEL_KWARGS["patch_size"], batch_size=100, train=False, num_workers=0,
        mean=MEAN, std=STD,
    )  # fmt: skip
    loader = build_loader(config)
    return [
        {k: v for k, v in b.items() if k in ("image", "label", "c_vlm", "map_valid")}
        for b in loader
    ]


def with_maps(images: list[dict], maps: list[dict]) -> list[dict]:
    """The image batches with another entry's maps (same split, same order)."""
    return [
        {**i, "c_vlm": m["c_vlm"], "map_valid": m["map_valid"]}
        for i, m in zip(images, maps, strict=True)
    ]


def shuffled(batches: list[dict], epoch: int, seed: int, size: int) -> list[dict]:
    """The split's samples reshuffled into batches of `size`, the same for every variant."""
    keys = ("image", "label", "c_vlm", "map_valid")
    full = {k: torch.cat([b[k] for b in batches]) for k in keys if k in batches[0]}
    order = torch.randperm(
        len(full["label"]), generator=torch.Generator().manual_seed(seed * 1000 + epoch)
    )
    return [
        {k: v[order[i : i + size]] for k, v in full.items()} for i in range(0, len(order), size)
    ]


def student(weights: Path, seed: int, **switches) -> StudentConfig:
    return StudentConfig(
        model=bb.MODEL, weights=str(weights), img_size=bb.IMG_SIZE, model_kwargs=bb.MODEL_KWARGS,
        num_classes=4, seed=seed, **switches,
    )  # fmt: skip


VARIANTS = {
    "vit": {"interaction_queries": False, "alignment": False},
    "ivit-box": {},
    "control": {"alignment": False},
    "ivit-tiny": {},
}


def train_variant(
    cfg: StudentConfig, train: list[dict], evals: dict[str, list[dict]], epochs: int, lr: float,
    batch: int, seed: int,
) -> dict:  # fmt: skip
    """Train at the common budget; per-epoch train losses, then top-1 on every eval split."""
    torch.manual_seed(seed)
    model, criterion = build(cfg)
    steps = (sum(len(b["label"]) for b in train) + batch - 1) // batch
    train_cfg = TrainConfig(epochs=epochs, lr=lr, warmup_epochs=0.5, seed=seed)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, steps)
    curve, step = [], 0
    for epoch in range(epochs):
        out = train_one_epoch(
            model, criterion, shuffled(train, epoch, seed, batch), optimizer, scheduler,
            torch.device("cpu"), epoch, amp=False, step=step, grad_clip=1.0,
        )  # fmt: skip
        step = out["step"]
        curve.append(
            {"epoch": epoch + 1, "ce": out["ce"], "align": out["align"], "top1": out["top1"]}
        )
    scores = {
        split: evaluate(model, batches, torch.device("cpu"))["top1"]
        for split, batches in evals.items()
    }
    return {"curve": curve, **scores}


@torch.no_grad()
def reference_kls(model, train: list[dict]) -> dict:
    """KL(map || .) of two references on the train maps: a uniform map, and the frozen
    attention (C_VFM's CLS rows, mean over blocks) that the queries start from."""
    uniform, frozen, n = 0.0, 0.0, 0
    model.eval()
    for batch in train:
        valid = batch["map_valid"]
        target = batch["c_vlm"][valid].flatten(1)  # [V, P]
        rows = model(batch["image"][valid], with_interactions=True)["vfm_cls"]  # [L, V, P]
        flat = torch.full_like(target, 1.0 / target.shape[1])
        uniform += kl_divergence(target, flat).sum().item()
        frozen += kl_divergence(target.expand_as(rows), renormalize(rows)).mean(0).sum().item()
        n += int(valid.sum())
    return {"uniform": uniform / n, "frozen_attention": frozen / n}


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.science", description=__doc__)
    parser.add_argument("--weights", type=Path, default=bb.DEFAULT_OUT, help="make backbone's file")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--lambdas", type=json.loads, default=[0.3, 3.0, 10.0], help="sweep (JSON)")
    parser.add_argument("--lrs", type=json.loads, default=[1e-3], help="sweep (JSON)")
    parser.add_argument(
        "--sweep-blocks", type=json.loads, default=[None],
        help="sweep of align_last_blocks (JSON; null = every block)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-rows", type=json.loads, default=["cls"], help="sweep of align_rows (JSON)"
    )
    parser.add_argument(
        "--correlation", type=float, default=CORRELATION,
        help="P(background == class) in train/val (the shortcut's strength, fixed by the "
        "baseline alone: docs/science.md)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads: this tiny ViT's matmuls gain little from a second thread, and on a "
        "shared machine spin-waiting threads cost several times the CPU (docs/science.md); with "
        "one thread the CPU time printed is the wall time of an idle core",
    )  # fmt: skip
    parser.add_argument(
        "--shards-root", type=Path, default=bench_dir() / "science",
        help="raw data and shards go to <this>/correlation-<level>/",
    )  # fmt: skip
    parser.add_argument("--cache-root", type=Path, default=bench_dir() / "science" / "cache")
    parser.add_argument("--out", type=Path, default=bench_dir() / "science" / "result.json")
    parser.add_argument("--skip-tiny", action="store_true", help="leave out the tiny-LLaVA row")
    parser.add_argument(
        "--baseline-only", action="store_true",
        help="stop after the ceiling and the ViT (how the shortcut's strength was fixed)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        print(f"no backbone at {args.weights}: run `make backbone` first", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen
    start, cpu0 = time.perf_counter(), cpu_seconds()

    # One raw copy and shards per correlation, so that a calibration run never meets another
    # level's files (the cache keys follow the shards' content, so one cache root serves all).
    folder = args.shards_root / f"correlation-{args.correlation:g}"
    raw_root, args.shards_root = folder / "raw", folder / "shards"
    if not raw_root.exists():
        write_shift_dataset(raw_root, correlation=args.correlation)
    print(f"sample-shift with P(background == class) = {args.correlation:g} in train and val")
    roots = (args.shards_root, args.cache_root)
    for split in SPLITS:
        ensure_shards(
            ShardsConfig(
                dataset=DATASET, split=split, root=raw_root, shards=args.shards_root,
                shard_size=1000,
            )
        )  # fmt: skip
    # The baseline and the ceiling need no maps: the calibration never extracts any.
    box = {} if args.baseline_only else {"train": extract_entry("box", "train", *roots)}
    data = {s: load_split(args.shards_root, s, box.get(s)) for s in SPLITS}
    train_maps = {"ivit-box": data["train"]}
    if not (args.skip_tiny or args.baseline_only):
        tiny = extract_entry("tiny", "train", *roots)
        train_maps["ivit-tiny"] = with_maps(
            data["train"], load_split(args.shards_root, "train", tiny)
        )
    evals = {"val": data["val"], "test_shift": data["test_shift"]}
    prep = time.perf_counter() - start
    print(f"data: {[(s, sum(len(b['label']) for b in data[s])) for s in SPLITS]}; prep {prep:.0f}s")
    budget = {"epochs": args.epochs, "lr": args.lr, "batch": args.batch}
    results: dict = {
        "budget": budget, "weights": str(args.weights), "seeds": args.seeds,
        "correlation": args.correlation,
    }  # fmt: skip

    # 1. Ceiling and baseline, before any I-ViT result (they fix the shortcut's cost).
    rows: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        for name, split in (("ceiling", "train_indep"), ("vit", "train")):
            run = train_variant(student(args.weights, seed, **VARIANTS["vit"]), data[split], evals,
                                seed=seed, **budget)  # fmt: skip
            rows.setdefault(name, []).append(run)
    ceiling = mean_std([r["test_shift"] for r in rows["ceiling"]])[0]
    vit_val, vit_shift = (mean_std([r[s] for r in rows["vit"]])[0] for s in ("val", "test_shift"))
    print(f"ceiling {100 * ceiling:.1f}; ViT val {100 * vit_val:.1f} shift {100 * vit_shift:.1f}: "
          f"the shortcut costs the baseline {100 * (ceiling - vit_shift):.1f} points of its ceiling")  # fmt: skip
    if args.baseline_only:
        print(f"RESULT_BASELINE correlation={args.correlation:g} ceiling={100 * ceiling:.1f} "
              f"vit_val={100 * vit_val:.1f} vit_shift={100 * vit_shift:.1f} "
              f"cost={100 * (ceiling - vit_shift):.1f} cpu_min={(cpu_seconds() - cpu0) / 60:.1f}")  # fmt: skip
        return 0

    # 2. Map fitting: can the queries reach the box maps at all?
    probe = build(student(args.weights, 0))[0]
    references = reference_kls(probe, data["train"])
    print(f"map fitting: KL(box || uniform) {references['uniform']:.3f}, "
          f"KL(box || frozen attention) {references['frozen_attention']:.3f}")  # fmt: skip
    sweep = []
    grid = [(lam, lr, blocks, which) for lam in args.lambdas for lr in args.lrs
            for blocks in args.sweep_blocks for which in args.sweep_rows]  # fmt: skip
    for lam, lr, blocks, which in grid:
        cfg = student(args.weights, 0, align_lambda=lam, align_last_blocks=blocks, align_rows=which)
        run = train_variant(cfg, data["train"], evals, epochs=args.epochs, lr=lr,
                            batch=args.batch, seed=0)  # fmt: skip
        kl = [round(c["align"], 3) for c in run["curve"]]
        member = {"lambda": lam, "lr": lr, "blocks": blocks, "rows": which, "align_kl": kl,
                  "val": run["val"], "test_shift": run["test_shift"]}  # fmt: skip
        sweep.append(member)
        print(f"sweep {sweep_label(member)}: align KL per epoch {kl}; val "
              f"{100 * run['val']:.1f} shift {100 * run['test_shift']:.1f}")  # fmt: skip
    if sweep:
        figure = plot_map_fitting(
            sweep, references, args.out.with_name(f"{args.out.stem}-map_fitting.png")
        )
        print(f"map-fitting curve: {figure}")

    # 3. The comparison at the default budget (lambda 1), 3 seeds.
    for seed in range(args.seeds):
        for name in ("ivit-box", "control", *(("ivit-tiny",) if "ivit-tiny" in train_maps else ())):
            maps = train_maps.get(name, data["train"])
            run = train_variant(student(args.weights, seed, **VARIANTS[name]), maps, evals,
                                seed=seed, **budget)  # fmt: skip
            rows.setdefault(name, []).append(run)

    table = {}
    print(f"\n{'variant':10s} {'val top-1':>14s} {'shift top-1':>14s} {'final align KL':>15s}")
    for name, runs in rows.items():
        val, val_std = mean_std([r["val"] for r in runs])
        shift, shift_std = mean_std([r["test_shift"] for r in runs])
        kl = mean_std([r["curve"][-1]["align"] for r in runs])[0]
        table[name] = {"val": val, "val_std": val_std, "shift": shift, "shift_std": shift_std,
                       "align_kl": kl, "seeds": [r["test_shift"] for r in runs]}  # fmt: skip
        print(f"{name:10s} {100 * val:8.1f} ± {100 * val_std:4.1f} {100 * shift:8.1f} ± "
              f"{100 * shift_std:4.1f} {kl:15.3f}")  # fmt: skip
    vit, ivit, control = table["vit"], table["ivit-box"], table["control"]
    largest_std = max(t["shift_std"] for t in table.values() if t is not table["ceiling"])
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    results.update({"table": table, "references": references, "sweep": sweep,
                    "wall_s": round(wall), "cpu_s": round(cpu)})  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min (this process); details {args.out}")
    print(
        f"RESULT vit_shift={100 * vit['shift']:.1f} ivit_shift={100 * ivit['shift']:.1f} "
        f"gain={100 * (ivit['shift'] - vit['shift']):.1f} "
        f"control_gain={100 * (control['shift'] - vit['shift']):.1f} "
        f"std={100 * largest_std:.1f} ceiling={100 * table['ceiling']['shift']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
