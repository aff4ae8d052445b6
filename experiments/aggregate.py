"""Member runs -> the experiment's numbers: mean +- std over seeds per table cell, the
convergence curves (Fig. 3) and per-domain accuracies.

Inputs are the files every run writes (metrics.jsonl, eval-<split>.json) under
data/experiments/<name>/runs/<member>/, so a report can be rebuilt from disk at any time.
The spread is the sample standard deviation over seeds (ddof=1; 0 for a single seed).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments.spec import ExperimentSpec, Member, members
from experiments.stats import bootstrap_se
from student.plots import read_metrics

DONE = "member.json"


def member_dir(root: Path, member: Member) -> Path:
    return root / "runs" / member.name


def is_done(root: Path, member: Member, eval_splits: list[str]) -> bool:
    """A member is finished when its record names the same fingerprint and every evaluation the
    spec asks for is on disk (a split added to a spec later re-evaluates finished members; their
    training resumes from its last checkpoint, so nothing retrains)."""
    run = member_dir(root, member)
    record = run / DONE
    if not record.is_file():
        return False
    if json.loads(record.read_text()).get("fingerprint") != member.fingerprint():
        return False
    return all((run / f"eval-{split}.json").is_file() for split in eval_splits)


def difference(runs: list[dict], base_runs: list[dict], metric: str) -> dict | None:
    """`metric` of these runs minus the baseline's, paired by seed (a seed fixes the data subset
    and the batches): the mean and its standard error. Where both sides kept per-image hits of
    the split, the error is a paired bootstrap over seeds and test images together
    (experiments.stats); else over seeds only. None under two common seeds."""
    base_by_seed = {r["seed"]: r for r in base_runs if metric in r}
    pairs = [
        (r, base_by_seed[r["seed"]]) for r in runs if metric in r and r["seed"] in base_by_seed
    ]
    if len(pairs) < 2:
        return None
    diffs = np.array([r[metric] - b[metric] for r, b in pairs], dtype=float)
    out = {"mean": float(diffs.mean()), "seeds": len(pairs)}
    hits_key = metric.removesuffix("_top1") + "_hits"
    keys = sorted(pairs[0][0].get(hits_key) or {})
    if keys and all(sorted(side.get(hits_key) or {}) == keys for pair in pairs for side in pair):
        row = np.array([[r[hits_key][k] for k in keys] for r, _ in pairs], dtype=float)
        base = np.array([[b[hits_key][k] for k in keys] for _, b in pairs], dtype=float)
        return {**out, "se": bootstrap_se(row, base), "se_over": "seeds and images"}
    return {**out, "se": float(diffs.std(ddof=1) / np.sqrt(len(diffs))), "se_over": "seeds"}


def mean_std(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": len(array), "values": list(values)}


def member_scores(run_dir: Path, eval_splits: list[str]) -> dict:
    """The numbers one finished member contributes: final and best val top-1, its curve, the
    extra splits' top-1, and per-domain accuracies where the data has domains."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    curve = [r["val_top1"] for r in rows if "val_top1" in r]
    scores: dict = {"curve": curve, "epochs": len(rows)}
    if curve:
        scores["val_top1"] = curve[-1]
        scores["val_best_top1"] = max(curve)
    last_domains = next((r["val_domains"] for r in reversed(rows) if "val_domains" in r), None)
    if last_domains:
        scores["domains"] = {"val": last_domains}
    for split in eval_splits:
        result = json.loads((run_dir / f"eval-{split}.json").read_text())
        scores[f"{split}_top1"] = result["top1"]
        if result.get("hits"):  # sample key -> 1/0 (evaluations written since per-image hits)
            scores[f"{split}_hits"] = result["hits"]
        if result.get("domains"):
            scores.setdefault("domains", {})[split] = result["domains"]
    return scores


def aggregate(spec: ExperimentSpec, root: Path) -> dict:
    """Every finished member of `spec` under `root`, reduced over seeds."""
    grouped: dict[tuple[str, float], list[dict]] = defaultdict(list)
    row_info: dict[str, dict] = {}
    missing = []
    for member in members(spec):
        row_info.setdefault(member.row, {"variant": member.variant, "teacher": member.teacher})
        if not is_done(root, member, spec.eval_splits):
            missing.append(member.name)
            continue
        grouped[(member.row, member.fraction)].append(
            {**member_scores(member_dir(root, member), spec.eval_splits), "seed": member.seed}
        )
    # An eval split of "val" scores the last checkpoint on val again: one metric, with per-image
    # hits (the training curve's last point is the same number).
    metrics = list(
        dict.fromkeys(["val_top1", "val_best_top1", *(f"{s}_top1" for s in spec.eval_splits)])
    )
    table = []
    for row, info in row_info.items():
        cells = {}
        base_row = _baseline_row(spec, row_info, info["variant"])
        for fraction in spec.fractions:
            runs = grouped.get((row, fraction), [])
            cell = {m: mean_std([r[m] for r in runs]) for m in metrics if runs and m in runs[0]}
            if base_row != row:
                for m, stat in cell.items():
                    paired = difference(runs, grouped.get((base_row, fraction), []), m)
                    if paired is not None:
                        stat["vs_baseline"] = paired
            domains = _domain_cell(runs)
            if domains:
                cell["domains"] = domains
            cells[f"{fraction:g}"] = cell
        table.append(
            {
                "row": row,
                **info,
                "baseline": spec.baseline_of(info["variant"]),
                "baseline_row": base_row,
                "cells": cells,
            }
        )
    return {
        "name": spec.name,
        "title": spec.title,
        "dataset": spec.dataset,
        "seeds": spec.seeds,
        "fractions": spec.fractions,
        "eval_splits": spec.eval_splits,
        "rows": table,
        "convergence": convergence(spec, grouped, row_info),
        # Fig. 3 at every data fraction: the paper reports its largest gain near 10 %.
        "convergence_by_fraction": {
            f"{fraction:g}": convergence(spec, grouped, row_info, fraction)
            for fraction in spec.fractions
        },
        "missing": missing,
    }


def _baseline_row(spec: ExperimentSpec, row_info: dict[str, dict], variant: str) -> str:
    """The row a variant is measured against (a baseline that aligns has one row per
    teacher: its first)."""
    wanted = spec.baseline_of(variant)
    return next((r for r, i in row_info.items() if i["variant"] == wanted), wanted)


def _domain_cell(runs: list[dict]) -> dict:
    """split -> domain -> mean/std over seeds, plus the variance across domains of the means."""
    out: dict = {}
    splits = {s for r in runs for s in r.get("domains", {})}
    for split in sorted(splits):
        per_domain = defaultdict(list)
        for run in runs:
            for domain, accuracy in run.get("domains", {}).get(split, {}).items():
                per_domain[domain].append(accuracy)
        stats = {d: mean_std(v) for d, v in sorted(per_domain.items())}
        out[split] = {
            "domains": stats,
            "variance": float(np.var([s["mean"] for s in stats.values()])),
        }
    return out


def convergence(
    spec: ExperimentSpec,
    grouped: dict[tuple[str, float], list[dict]],
    row_info: dict[str, dict],
    fraction: float | None = None,
) -> dict:
    """Mean val top-1 per epoch of each row at one data fraction (default: the largest) and the
    first epoch at which it reaches its baseline's best mean accuracy at that fraction (None:
    never)."""
    fraction = max(spec.fractions) if fraction is None else fraction
    curves = {}
    for row in row_info:
        runs = [r["curve"] for r in grouped.get((row, fraction), []) if r["curve"]]
        if not runs:
            continue
        length = min(len(c) for c in runs)
        stacked = np.array([c[:length] for c in runs])
        curves[row] = {
            "mean": stacked.mean(axis=0).tolist(),
            "std": (stacked.std(axis=0, ddof=1) if len(runs) > 1 else 0 * stacked[0]).tolist(),
        }
    for row, info in row_info.items():
        if row not in curves:
            continue
        baseline_row = _baseline_row(spec, row_info, info["variant"])
        base = curves.get(baseline_row)
        if base is None:
            curves[row]["epochs_to_baseline_best"] = None
            continue
        target = max(base["mean"])
        reached = [i + 1 for i, v in enumerate(curves[row]["mean"]) if v >= target]
        curves[row]["baseline"] = baseline_row
        curves[row]["baseline_best"] = target
        curves[row]["baseline_best_epoch"] = int(np.argmax(base["mean"])) + 1
        curves[row]["epochs_to_baseline_best"] = reached[0] if reached else None
    return {"fraction": fraction, "curves": curves}
