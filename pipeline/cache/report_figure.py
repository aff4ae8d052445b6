"""report.png of a cache entry: distributions of each map's box mass against the uniform map,
mean figures side by side, and the best and worst rows as overlays on their images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: the report is a file, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

from pipeline.geometry import teacher_view_rect
from pipeline.shards.reader import iter_shard

if TYPE_CHECKING:
    from pipeline.cache.report_rows import ReportRows

COLORS = {"C_VLM": "tab:red", "C_fore": "tab:orange", "C_back": "tab:blue", "uniform": "0.4"}


def _images(rows: ReportRows, wanted: list[int], shard_dir: Path) -> dict[int, Image.Image]:
    """Decoded images of the example rows (only their shards are read again)."""
    by_key = {rows.keys[i]: i for i in wanted}
    out = {}
    for shard in sorted({rows.shards[i] for i in wanted}):
        for sample in iter_shard(shard_dir / shard):
            if sample.key in by_key:
                out[by_key[sample.key]] = Image.open(io.BytesIO(sample.image_bytes)).convert("RGB")
    return out


def _distributions(ax: plt.Axes, metrics: dict, metric: str, title: str) -> None:
    bins = np.linspace(0.0, 1.0, 21)
    for kind in ("C_VLM", "C_fore", "C_back", "uniform"):
        values = metrics[kind][metric]
        values = values[np.isfinite(values)]
        if len(values):
            ax.hist(values, bins=bins, histtype="step", lw=2 if kind == "C_VLM" else 1.2,
                    color=COLORS[kind], label=f"{kind} (mean {values.mean():.2f})")  # fmt: skip
    ax.set(title=title, xlabel=metric.replace("_", " "), ylabel="rows", xlim=(0, 1))
    ax.legend(fontsize=7)


def _means(ax: plt.Axes, group: dict[str, Any]) -> None:
    """Mean of each figure per map kind, the uniform map's figure as a grey bar beside it."""
    names = ("box_mass", "pointing", "entropy")
    kinds = list(group["maps"])
    width = 0.8 / (2 * len(kinds))
    for k, kind in enumerate(kinds):
        figures = group["maps"][kind]
        means = [figures[m]["mean"] or 0.0 for m in names]
        uniform = [figures[f"uniform_{m}"]["mean"] or 0.0 for m in names]
        x = np.arange(len(names)) + (2 * k - len(kinds)) * width
        ax.bar(x, means, width, color=COLORS[kind], label=kind)
        ax.bar(x + width, uniform, width, color=COLORS["uniform"], alpha=0.5,
               label="uniform map" if k == 0 else None)  # fmt: skip
    ax.set_xticks(np.arange(len(names)), [n.replace("_", " ") for n in names])
    ax.set(title=f"{group['group']}: means (grey: uniform map)", ylim=(0, 1.25))
    ax.legend(fontsize=7, ncol=2, loc="upper center")


def _overlay(ax: plt.Axes, image: Image.Image, rows: ReportRows, i: int, geometry, caption: str):
    """The C_VLM row over its image, placed on the pixels the teacher's grid covered."""
    width, height = rows.sizes[i]
    view = teacher_view_rect(geometry, int(width), int(height))
    ax.imshow(image, extent=(0, width, height, 0))
    ax.imshow(rows.maps["C_VLM"][i].astype(np.float32), cmap="inferno", alpha=0.55,
              extent=(view.x0, view.x1, view.y1, view.y0), interpolation="nearest")  # fmt: skip
    for x0, y0, x1, y1 in rows.boxes[i]:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.5))
    ax.set_xlim(view.x0, view.x1)
    ax.set_ylim(view.y1, view.y0)
    ax.set_title(caption, fontsize=7)
    ax.axis("off")


def render_report_png(
    report: dict[str, Any], rows: ReportRows, metrics: dict, shard_dir: Path
) -> bytes:
    examples = report["examples"]
    shown = [e["row"] for e in examples["best"] + examples["worst"]]
    images = _images(rows, shown, shard_dir)
    columns = 4
    fig = plt.figure(figsize=(4 * columns, 11))
    grid = fig.add_gridspec(3, columns, height_ratios=[1.2, 1, 1])
    _distributions(fig.add_subplot(grid[0, 0]), metrics, "box_mass", "box mass per row")
    _distributions(fig.add_subplot(grid[0, 1]), metrics, "pointing", "pointing per row")
    _distributions(fig.add_subplot(grid[0, 2]), metrics, "entropy", "normalized entropy per row")
    _means(fig.add_subplot(grid[0, 3]), report["groups"][0])
    for r, (name, picked) in enumerate((("best", examples["best"]), ("worst", examples["worst"]))):
        for c in range(columns):
            ax = fig.add_subplot(grid[1 + r, c])
            if c >= len(picked) or picked[c]["row"] not in images:
                ax.axis("off")
                continue
            e = picked[c]
            caption = (f"{name}: {e['key']}\nC_VLM box mass {e['box_mass']:.2f} "
                       f"(uniform {e['uniform_box_mass']:.2f}), pointing {e['pointing']:.2f}")  # fmt: skip
            _overlay(ax, images[e["row"]], rows, e["row"], report["geometry"], caption)
    fig.suptitle(
        f"{report['dataset']}/{report['split']}  teacher {report['teacher']}  entry "
        f"{report['cache_key']}\n(C_VLM over the teacher's view, colors spanning each map's own "
        "min..max; green: ground-truth boxes)"
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()
