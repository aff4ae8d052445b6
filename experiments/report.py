"""The experiment's write-up: results.md (paper-style tables), results.json and convergence.png
(Fig. 3: val top-1 per epoch for every row, with epochs to reach the baseline's best, one panel
per data fraction)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline.figures import save_figure


def _pct(stat: dict | None) -> str:
    if not stat:
        return "-"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _delta(stat: dict | None, base: dict | None) -> str:
    """The difference to the baseline in points; ± its standard error where the baseline shares
    at least two seeds (paired: experiments.aggregate.difference)."""
    if not stat or not base:
        return ""
    paired = stat.get("vs_baseline")
    if paired is None:
        return f" ({100 * (stat['mean'] - base['mean']):+.1f})"
    return f" ({100 * paired['mean']:+.1f} ± {100 * paired['se']:.1f} se)"


def _metric_columns(results: dict) -> list[tuple[str, str]]:
    """(metric key, column title) for each split a table shows."""
    columns = {"val_top1": "val top-1 (%)"}
    columns |= {f"{s}_top1": f"{s} top-1 (%)" for s in results["eval_splits"] if s != "val"}
    return list(columns.items())


def results_markdown(results: dict) -> str:
    fractions = [f"{f:g}" for f in results["fractions"]]
    rows_by_name = {r["row"]: r for r in results["rows"]}
    seeds = results["seeds"]
    lines = [
        f"# {results['title']}",
        "",
        f"Dataset `{results['dataset']}`; mean ± std (sample, ddof=1) over seeds {seeds}; "
        "the final epoch's top-1; in brackets the difference to the row's baseline in points, "
        "± its standard error, paired by seed (the same data subset and batches): a bootstrap "
        "over seeds and test images where the runs kept per-image hits, else over seeds.",
        "",
    ]
    header = ["Model", "Teacher"]
    keys = []
    for metric, title in _metric_columns(results):
        for fraction in fractions:
            share = f" @ {100 * float(fraction):g} % data" if len(fractions) > 1 else ""
            header.append(title + share)
            keys.append((metric, fraction))
    header.append("seeds done")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        base_row = rows_by_name.get(row["baseline_row"])
        cells = [row["variant"], row["teacher"] or "-"]
        for metric, fraction in keys:
            stat = row["cells"].get(fraction, {}).get(metric)
            base = None
            if base_row is not None and base_row is not row:
                base = base_row["cells"].get(fraction, {}).get(metric)
            cells.append(_pct(stat) + _delta(stat, base))
        done = [row["cells"][f].get("val_top1", {}).get("n", 0) for f in fractions]
        cells.append("/".join(str(n) for n in done) + f" of {len(seeds)}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _convergence_lines(results)
    lines += _convergence_by_fraction_lines(results)
    lines += _domain_lines(results, rows_by_name)
    if results["missing"]:
        lines += [
            "",
            f"Not finished yet ({len(results['missing'])}): "
            + ", ".join(f"`{m}`" for m in results["missing"]),
        ]
    return "\n".join(lines) + "\n"


def _convergence_lines(results: dict) -> list[str]:
    curves = results["convergence"]["curves"]
    if not curves:
        return []
    fraction = results["convergence"]["fraction"]
    lines = [
        "",
        f"## Convergence (Fig. 3; {100 * fraction:g} % data, mean over seeds)",
        "",
        "| Model | best val top-1 (%) | baseline | baseline's best (%) at epoch | "
        "epochs to reach it |",
        "|---|---|---|---|---|",
    ]
    for row, curve in curves.items():
        reached = curve.get("epochs_to_baseline_best")
        target = curve.get("baseline_best")
        lines.append(
            f"| {row} | {100 * max(curve['mean']):.2f} | {curve.get('baseline', '-')} | "
            + (
                f"{100 * target:.2f} at {curve['baseline_best_epoch']}"
                if target is not None
                else "-"
            )
            + f" | {reached if reached is not None else 'not reached'} |"
        )
    return lines


def _convergence_by_fraction_lines(results: dict) -> list[str]:
    """Epochs to reach the baseline's best at every data fraction, one column each (only when
    the spec has more than one fraction)."""
    by_fraction = results.get("convergence_by_fraction", {})
    if len(by_fraction) < 2:
        return []
    fractions = list(by_fraction)
    lines = [
        "",
        "## Epochs to reach the baseline's best val top-1, per data fraction (mean curves)",
        "",
        "| Model | " + " | ".join(f"{100 * float(f):g} % data" for f in fractions) + " |",
        "|" + "---|" * (len(fractions) + 1),
    ]
    for row in results["rows"]:
        cells = []
        for fraction in fractions:
            curve = by_fraction[fraction]["curves"].get(row["row"])
            if curve is None or curve.get("baseline_best") is None:
                cells.append("-")
                continue
            reached = curve["epochs_to_baseline_best"]
            cells.append(
                f"{reached if reached is not None else 'not reached'} "
                f"(best {100 * max(curve['mean']):.1f} vs {100 * curve['baseline_best']:.1f})"
            )
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return lines


def _domain_lines(results: dict, rows_by_name: dict) -> list[str]:
    lines: list[str] = []
    splits = sorted(
        {
            split
            for row in results["rows"]
            for cell in row["cells"].values()
            for split in cell.get("domains", {})
        }
    )
    for split in splits:
        fraction = f"{max(results['fractions']):g}"
        domains = sorted(
            {
                d
                for row in results["rows"]
                for d in row["cells"]
                .get(fraction, {})
                .get("domains", {})
                .get(split, {})
                .get("domains", {})
            }
        )
        lines += ["", f"## Per domain: {split} (top-1 %, mean ± std over seeds)", ""]
        lines.append("| Model | Teacher | " + " | ".join(domains) + " | variance across domains |")
        lines.append("|" + "---|" * (len(domains) + 3))
        for row in rows_by_name.values():
            cell = row["cells"].get(fraction, {}).get("domains", {}).get(split)
            if not cell:
                continue
            values = [_pct(cell["domains"].get(d)) for d in domains]
            lines.append(
                f"| {row['variant']} | {row['teacher'] or '-'} | "
                + " | ".join(values)
                + f" | {1e4 * cell['variance']:.2f} (x1e-4) |"
            )
    return lines


def plot_convergence(results: dict, out_path: Path) -> Path:
    """Every row's mean val top-1 per epoch (band: std over seeds); dotted: each baseline's best;
    a marker where a row first reaches its baseline's best. One panel per data fraction."""
    panels = list(results.get("convergence_by_fraction", {}).values()) or [results["convergence"]]
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.5 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        _plot_convergence_panel(ax, panel)
        ax.set_title(f"{100 * panel['fraction']:g} % data")
        ax.set_ylabel("val top-1 (%)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.suptitle(f"{results['title']}: convergence")
    return save_figure(fig, out_path, dpi=120)


def _plot_convergence_panel(ax: plt.Axes, panel: dict) -> None:
    curves = panel["curves"]
    drawn_targets = set()
    for row, curve in curves.items():
        mean, std = np.array(curve["mean"]) * 100, np.array(curve["std"]) * 100
        epochs = np.arange(1, len(mean) + 1)
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=row)
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        reached = curve.get("epochs_to_baseline_best")
        if reached is not None and curve.get("baseline") != row:
            ax.annotate(
                f"{reached} ep",
                (reached, mean[reached - 1]),
                textcoords="offset points",
                xytext=(4, -12),
                color=line.get_color(),
                fontsize=8,
            )
            ax.plot([reached], [mean[reached - 1]], marker="*", ms=12, color=line.get_color())
        target = curve.get("baseline_best")
        if target is not None and curve["baseline"] not in drawn_targets:
            drawn_targets.add(curve["baseline"])
            ax.axhline(100 * target, ls=":", color="gray", lw=1)
            ax.text(
                1, 100 * target, f"{curve['baseline']} best", fontsize=8, color="gray", va="bottom"
            )
    ax.set_xlabel("epoch")
    if curves:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "results.json": out_dir / "results.json",
        "results.md": out_dir / "results.md",
        "convergence.png": out_dir / "convergence.png",
    }
    paths["results.json"].write_text(json.dumps(results, indent=1))
    paths["results.md"].write_text(results_markdown(results))
    plot_convergence(results, paths["convergence.png"])
    return paths
