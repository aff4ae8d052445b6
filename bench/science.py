"""Can correct maps teach at all? Oracle headroom, the student, and map-content controls.

    python -m bench.science                       (what `make bench-science` runs)

On each benchmark (bench/science_data.py: `sample-shift`, whose cue is the background colour, and
`sample-spot`, whose cue is a marker apart from the object) the cue names the class in train and
val and says nothing in test_shift. On the benchmark's frozen stand-in backbone, at one budget,
over seeds, every variant sees exactly the same batches:

  ceiling    the ViT head trained on train_indep (no shortcut): what the features allow
  vit        the baseline: the same frozen backbone, only its head trained (on train)
  oracle-*   the ViT whose attention the correct map steers at train and test (student/oracle.py):
             replace the CLS row (every block / last block), restrict the CLS row (masked
             softmax), restrict the CLS row and the object's own rows. It bounds what any
             attention transfer can give here.
  ivit       the I-ViT aligned to the correct maps (box on sample-shift, mask on sample-spot)
  shuffled   the same I-ViT with each image given another image's map (a derangement)
  uniform    the same I-ViT with uniform maps
  control    the same I-ViT without the alignment (parameters, no maps)
  ivit-*     with --named-variants: the I-ViT with one switch changed (the paper's literal KL
             direction, per-head alignment, gates starting near C_VFM or near C_AGT (with its
             shuffled-map twin), a low-rank query)

Before any of that it checks the backbone (checksum and linear probe against its card) and the
calibration (ceiling - ViT on the shift >= 15 points). A benchmark whose best oracle does not beat
the ViT by 10 points cannot show the method's effect, and says so. Ends with one line per
benchmark (shifted split, percent, means over seeds; se: the bootstrap standard error over test
images and seeds of ivit - shuffled, paired):

RESULT bench=<name> vit= oracle= ivit= shuffled= control= se= ceiling=
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.science_data import (
    Benchmark,
    benchmarks,
    check_backbone,
    epoch_batches,
    prepare,
    student_config,
)
from experiments.stats import bootstrap_se
from pipeline.paths import bench_dir
from student.build import build, build_optimizer, build_scheduler
from student.config import TrainConfig
from student.engine import classifier_forward, train_one_epoch
from student.loss import kl_divergence, renormalize
from student.map_controls import shuffled_maps, uniform_maps
from student.oracle import build_oracle, oracle_forward

VIT = {"interaction_queries": False, "alignment": False}
IVIT_VARIANTS = {  # name -> (StudentConfig switches, the train maps)
    "ivit": ({}, "teacher"),
    "shuffled": ({}, "shuffled"),
    "uniform": ({}, "uniform"),
    "control": ({"alignment": False}, "teacher"),
}
NAMED_VARIANTS = {  # issue 19 item 5: the I-ViT with correct maps, one switch changed
    "ivit-kl-agt||vlm": ({"kl_direction": "agt||vlm"}, "teacher"),  # the paper's literal Eq. 14
    "ivit-per-head": ({"align_heads": "each"}, "teacher"),
    "ivit-gate-0.05": ({"gate_init": 0.05}, "teacher"),  # fused attention starts near C_VFM
    "ivit-rank-8": ({"query_rank": 8}, "teacher"),  # W_q + A B: a quarter of W_q's parameters
    # The mirror image of gate 0.05: the block reads mostly C_AGT, the rows the maps constrain;
    # with its shuffled-map control, does content matter once the fit reaches the CLS read?
    "ivit-gate-0.95": ({"gate_init": 0.95}, "teacher"),
    "shuffled-gate-0.95": ({"gate_init": 0.95}, "shuffled"),
}
ORACLES = {  # name -> (mode, blocks steered: None = every block)
    "oracle-replace-all": ("replace", None),
    "oracle-replace-last": ("replace", 1),
    "oracle-restrict-all": ("restrict", None),
    "oracle-restrict-object-all": ("restrict-object", None),
}
HEADROOM_RULE, CALIBRATION_RULE = 0.10, 0.15  # points of top-1 (as fractions)
# (correct maps, shuffled maps) pairs whose difference is the map-content test
CONTENT_PAIRS = [("ivit", "shuffled"), ("ivit-gate-0.95", "shuffled-gate-0.95")]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def control_maps(train: list[dict], control: str, seed: int) -> list[dict]:
    """The train batches with the control's maps: 'shuffled' deranges the valid maps over the
    whole split once (so each image keeps the same wrong map every epoch)."""
    if control == "teacher":
        return train
    maps = torch.cat([b["c_vlm"] for b in train])  # [N, g, g]
    valid = torch.cat([b["map_valid"] for b in train])  # [N]
    if control == "shuffled":
        maps, valid = shuffled_maps(maps, valid, torch.Generator().manual_seed(seed))
    else:
        maps = uniform_maps(maps, valid)
    sizes = [len(b["label"]) for b in train]
    return [
        {**b, "c_vlm": m, "map_valid": v}
        for b, m, v in zip(train, maps.split(sizes), valid.split(sizes), strict=True)
    ]


@torch.no_grad()
def hits_of(model, batches: list[dict], oracle: bool) -> np.ndarray:
    """Per-image hits [N] (the oracle reads each batch's maps)."""
    model.eval()
    out = []
    for b in batches:
        logits = model(b["image"], b["c_vlm"], b["map_valid"]) if oracle else model(b["image"])
        out.append((logits.argmax(-1) == b["label"]).numpy())
    return np.concatenate(out)


@torch.no_grad()
def gate_means(model, batches: list[dict]) -> list[list[float]] | None:
    """Mean [g1, g2] per block over the images (None without gates)."""
    model.eval()
    gates = [model(b["image"], with_interactions=True)["gates"] for b in batches]
    if gates[0] is None:
        return None
    means = torch.cat(gates, dim=1).mean(1).tolist()  # [L, 2]
    return [[round(g, 3) for g in block] for block in means]


def train_run(
    name: str, bench: Benchmark, weights: Path, data: dict, seed: int, args: argparse.Namespace
) -> dict:
    """One variant, one seed, at the common budget: val top-1, shift hits, final align KL."""
    torch.manual_seed(seed)
    oracle = name in ORACLES
    if oracle:
        model = build_oracle(student_config(weights, seed), *ORACLES[name])
        criterion = build(student_config(weights, seed, **VIT))[1]  # cross-entropy only
        forward, train = oracle_forward, data["train"]
    else:
        switches, control = {**IVIT_VARIANTS, **NAMED_VARIANTS}.get(name, (VIT, "teacher"))
        model, criterion = build(student_config(weights, seed, **switches))
        forward = classifier_forward
        train = data["train_indep"] if name == "ceiling" else data["train"]
        train = control_maps(train, control, seed)
    steps = (sum(len(b["label"]) for b in train) + args.batch - 1) // args.batch
    train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, warmup_epochs=0.5, seed=seed)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, steps)
    step, out = 0, {}
    for epoch in range(args.epochs):
        out = train_one_epoch(
            model, criterion, epoch_batches(train, epoch, seed, args.batch), optimizer, scheduler,
            torch.device("cpu"), epoch, amp=False, step=step, grad_clip=1.0, forward=forward,
        )  # fmt: skip
        step = out["step"]
    gates = None if oracle or name in ("vit", "ceiling") else gate_means(model, data["val"])
    return {
        "val": float(hits_of(model, data["val"], oracle).mean()),
        "shift_hits": hits_of(model, data["test_shift"], oracle),
        "align_kl": out.get("align", 0.0),
        "gates": gates,
    }


@torch.no_grad()
def reference_kls(weights: Path, train: list[dict]) -> dict:
    """KL(map || .) of two references on the train maps: a uniform map, and the frozen
    attention (C_VFM's CLS rows, mean over blocks) that the queries start from."""
    model = build(student_config(weights, 0))[0].eval()
    uniform, frozen, n = 0.0, 0.0, 0
    for batch in train:
        valid = batch["map_valid"]
        target = batch["c_vlm"][valid].flatten(1)  # [V, P]
        rows = model(batch["image"][valid], with_interactions=True)["vfm_cls"]  # [L, V, P]
        flat = torch.full_like(target, 1.0 / target.shape[1])
        uniform += kl_divergence(target, flat).sum().item()
        frozen += kl_divergence(target.expand_as(rows), renormalize(rows)).mean(0).sum().item()
        n += int(valid.sum())
    return {"uniform": uniform / n, "frozen_attention": frozen / n}


def pair_accuracy(hits: np.ndarray, labels: np.ndarray, cues: np.ndarray) -> dict:
    """Top-1 per (shape, cue) pair [shape][cue] (mean over seeds), per shape, and where the cue
    agrees / disagrees with the class."""
    per_image = hits.mean(0)  # [N]
    grid = [
        [float(per_image[(labels == a) & (cues == b)].mean()) for b in range(int(cues.max()) + 1)]
        for a in range(int(labels.max()) + 1)
    ]  # fmt: skip
    return {
        "grid": [[round(v, 3) for v in row] for row in grid],
        "per_shape": [float(per_image[labels == a].mean()) for a in range(len(grid))],
        "agrees": float(per_image[labels == cues].mean()),
        "disagrees": float(per_image[labels != cues].mean()),
    }


def summarize(runs: list[dict]) -> dict:
    hits = np.stack([r["shift_hits"] for r in runs])  # [S, N]
    return {
        "shift": float(hits.mean()), "shift_se": bootstrap_se(hits),
        "shift_per_seed": hits.mean(1).round(4).tolist(),
        "val": float(np.mean([r["val"] for r in runs])),
        "align_kl": float(np.mean([r["align_kl"] for r in runs])),
        "gates": runs[-1]["gates"], "hits": hits,
    }  # fmt: skip


def verdict(table: dict, references: dict) -> str:
    """Which link holds and which fails, by the issue's rules."""
    vit, ivit = table["vit"]["shift"], table["ivit"]["shift"]
    best = max((n for n in table if n in ORACLES), key=lambda n: table[n]["shift"])
    headroom = table[best]["shift"] - vit
    if headroom < HEADROOM_RULE:
        return (
            f"NO HEADROOM: the best oracle ({best}) is {100 * headroom:.1f} points above the ViT "
            f"(rule: {100 * HEADROOM_RULE:.0f}); this benchmark cannot show attention transfer, "
            "so its I-ViT numbers are not evidence either way"
        )
    content = ivit - table["shuffled"]["shift"]
    se = bootstrap_se(table["ivit"]["hits"], table["shuffled"]["hits"])
    fit = table["ivit"]["align_kl"] / references["uniform"]
    return (
        f"headroom {100 * headroom:.1f} points ({best}); I-ViT - ViT {100 * (ivit - vit):+.1f} "
        f"(goal >= +5); I-ViT - shuffled {100 * content:+.1f} = {content / se:.1f} se (goal > 2);"
        f" control - ViT {100 * (table['control']['shift'] - vit):+.1f}; the queries fit the maps "
        f"to {100 * fit:.0f} % of the uniform map's KL"
    )


def run_benchmark(bench: Benchmark, weights: Path, args: argparse.Namespace) -> dict:
    correlation = bench.correlation if args.correlation is None else args.correlation
    print(f"\n== {bench.name}: P({bench.cue} names the class) = {correlation:g} in train/val")
    check = check_backbone(bench, weights)
    print(f"backbone {weights.name} sha256 {check['sha256'][:16]} (card {str(check['card_sha256'])[:16]}); "
          f"linear probe now {check['probe']} (card {check['card_probe']}): "
          f"{'agrees with its card' if check['agrees'] else 'DIFFERS FROM ITS CARD'}")  # fmt: skip
    data, cues = prepare(bench, args.root, args.cache_root, correlation, not args.baseline_only)
    sizes = {s: sum(len(b["label"]) for b in data[s]) for s in data}
    print(f"data {sizes}")
    names = ["ceiling", "vit"]
    if not args.baseline_only:
        names += [*args.oracles, *IVIT_VARIANTS, *(NAMED_VARIANTS if args.named_variants else ())]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for seed in range(args.seeds):
        for name in names:
            runs[name].append(train_run(name, bench, weights, data, seed, args))
        print(f"seed {seed}: " + " ".join(
            f"{n} {100 * float(runs[n][-1]['shift_hits'].mean()):.1f}" for n in names))  # fmt: skip
    table = {n: summarize(r) for n, r in runs.items()}
    labels = np.concatenate([b["label"].numpy() for b in data["test_shift"]])
    pairs = {n: pair_accuracy(table[n]["hits"], labels, cues) for n in ("ceiling", "vit", "ivit")
             if n in table}  # fmt: skip
    for name, pair in pairs.items():
        print(f"{name} on test_shift: cue agrees with the class {100 * pair['agrees']:.1f}, "
              f"disagrees {100 * pair['disagrees']:.1f}; per shape "
              f"{[round(100 * a, 1) for a in pair['per_shape']]}")  # fmt: skip
    ceiling, vit = table["ceiling"], table["vit"]
    cost = ceiling["shift"] - vit["shift"]
    print(f"calibration: ceiling {100 * ceiling['shift']:.1f}; ViT val {100 * vit['val']:.1f} shift "
          f"{100 * vit['shift']:.1f}: the cue costs the baseline {100 * cost:.1f} points of its ceiling "
          f"({'meets' if cost >= CALIBRATION_RULE else 'BELOW'} the {100 * CALIBRATION_RULE:.0f}-point rule)")  # fmt: skip
    result = {"bench": bench.name, "correlation": correlation, "backbone": check, "sizes": sizes,
              "calibration_cost": cost, "pairs": pairs}  # fmt: skip
    if args.baseline_only:
        print(f"RESULT_BASELINE bench={bench.name} correlation={correlation:g} "
              f"ceiling={100 * ceiling['shift']:.1f} vit_val={100 * vit['val']:.1f} "
              f"vit_shift={100 * vit['shift']:.1f} cost={100 * cost:.1f}")  # fmt: skip
        return {**result, "table": _jsonable(table)}
    references = reference_kls(weights, data["train"])
    print(f"map fitting references: KL({bench.teacher} || uniform) {references['uniform']:.3f}, "
          f"KL({bench.teacher} || frozen attention) {references['frozen_attention']:.3f}")  # fmt: skip
    print(f"\n{'variant':27s} {'val':>6s} {'shift':>6s} {'± se':>5s} {'align KL':>9s}  gates/block")
    for name, row in table.items():
        gates = "" if row["gates"] is None else str(row["gates"])
        print(f"{name:27s} {100 * row['val']:6.1f} {100 * row['shift']:6.1f} "
              f"{100 * row['shift_se']:5.1f} {row['align_kl']:9.3f}  {gates}")  # fmt: skip
    best = max(args.oracles, key=lambda n: table[n]["shift"])
    se = bootstrap_se(table["ivit"]["hits"], table["shuffled"]["hits"])
    line = (
        f"RESULT bench={bench.name} vit={100 * vit['shift']:.1f} "
        f"oracle={100 * table[best]['shift']:.1f} ivit={100 * table['ivit']['shift']:.1f} "
        f"shuffled={100 * table['shuffled']['shift']:.1f} "
        f"control={100 * table['control']['shift']:.1f} se={100 * se:.1f} "
        f"ceiling={100 * ceiling['shift']:.1f}"
    )
    print(f"verdict: {verdict(table, references)}")
    for correct, wrong in CONTENT_PAIRS:
        if correct in table and wrong in table:
            diff = table[correct]["shift"] - table[wrong]["shift"]
            pair_se = bootstrap_se(table[correct]["hits"], table[wrong]["hits"])
            print(f"content: {correct} - {wrong} = {100 * diff:+.1f} points, se {100 * pair_se:.1f} "
                  f"({diff / pair_se:+.1f} se); {correct} - vit "
                  f"{100 * (table[correct]['shift'] - vit['shift']):+.1f}")  # fmt: skip
    return {**result, "references": references, "best_oracle": best, "se_ivit_minus_shuffled": se,
            "verdict": verdict(table, references), "table": _jsonable(table), "result": line}  # fmt: skip


def _jsonable(table: dict) -> dict:
    """The table for result.json; the per-image hits as 0/1 lists, [seed][image] in test_shift
    order, so that any paired difference can be resampled again."""
    return {
        n: {k: (v.astype(int).tolist() if k == "hits" else v) for k, v in row.items()}
        for n, row in table.items()
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.science", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--benches", nargs="+", default=list(benchmarks()),
                        choices=list(benchmarks()))  # fmt: skip
    parser.add_argument("--shift-weights", type=Path, default=None, help="make backbone's file")
    parser.add_argument("--spot-weights", type=Path, default=None, help="make spot-backbone's")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3, help="the same for every variant")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--oracles", nargs="+", default=list(ORACLES), choices=list(ORACLES))
    parser.add_argument("--named-variants", action="store_true",
                        help=f"also the I-ViT variants {', '.join(NAMED_VARIANTS)}")  # fmt: skip
    parser.add_argument(
        "--correlation", type=float, default=None,
        help="P(cue names the class) in train/val; default: the dataset's own (fixed by the "
        "ViT baseline alone: docs/science.md); other levels are for calibration (--baseline-only)",
    )  # fmt: skip
    parser.add_argument("--baseline-only", action="store_true",
                        help="stop after the ceiling and the ViT (how the cue's strength is fixed)")  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads: this tiny ViT's matmuls gain little from a second thread, and on a "
        "shared machine spin-waiting threads cost several times the CPU",
    )  # fmt: skip
    parser.add_argument("--root", type=Path, default=bench_dir() / "science")
    parser.add_argument("--cache-root", type=Path, default=bench_dir() / "science" / "cache")
    parser.add_argument("--out", type=Path, default=bench_dir() / "science" / "result.json")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds {args.seeds} --epochs {args.epochs}: both must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = {"sample-shift": args.shift_weights, "sample-spot": args.spot_weights}
    chosen = {name: benchmarks()[name] for name in args.benches}
    weights = {name: given[name] or bench.default_weights for name, bench in chosen.items()}
    for name, path in weights.items():
        if not path.is_file():
            print(f"error: no backbone at {path} for {name}: run `{chosen[name].make_target}` "
                  "first", file=sys.stderr)  # fmt: skip
            return 2
    torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen
    start, cpu0 = time.perf_counter(), cpu_seconds()
    results = [run_benchmark(bench, weights[name], args) for name, bench in chosen.items()]
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    budget = {"seeds": args.seeds, "epochs": args.epochs, "lr": args.lr, "batch": args.batch}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget": budget, "benchmarks": results, "wall_s": round(wall),
                                    "cpu_s": round(cpu)}, indent=1))  # fmt: skip
    print(f"\nwall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min (this process); details {args.out}")
    for result in results:
        if "result" in result:
            print(result["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
