"""Run figures: loss/accuracy curves from metrics.jsonl and interaction overlays
(image, C_VFM, C_VLM, C_AGT) for a few validation images."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt
import numpy as np
import torch

from pipeline.figures import save_figure


def read_metrics(path: str | Path) -> list[dict]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Loss terms and top-1 per epoch, train and validation, side by side."""
    rows = read_metrics(metrics_path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (
        ("train_loss", "-"),
        ("train_ce", "--"),
        ("train_align", ":"),
        ("val_loss", "-."),
    ):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points, strict=True), style, marker="o", label=key)
    for key in ("train_top1", "val_top1"):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, out_path, dpi=100)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[B, 3, H, W] normalized -> [B, H, W, 3] in [0, 1] for display."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images.detach().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def plot_overlays(
    out_path: str | Path,
    images: np.ndarray,
    maps: dict[str, np.ndarray | None],
    titles: Sequence[str] | None = None,
) -> Path:
    """One row per image: the image, then each map ([B, g, g], None when absent) upsampled
    over it. Maps are shown as given (each already a distribution over the grid)."""
    fig, axes = map_overlay_grid(images, maps, panel_inches=2.2)
    for i in range(images.shape[0]):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize=8)
    return save_figure(fig, out_path, dpi=80)


def map_overlay_grid(
    images: np.ndarray, maps: dict[str, np.ndarray | None], panel_inches: float
) -> tuple[plt.Figure, np.ndarray]:
    """One row per image ([B, H, W, 3]) and a column per map ([B, g, g], None when absent)
    upsampled over it, axes off; column 0 is left for the caller's own picture of the image."""
    columns = [(name, m) for name, m in maps.items() if m is not None]
    n, cols = images.shape[0], 1 + len(columns)
    fig, axes = plt.subplots(
        n, cols, figsize=(panel_inches * cols, panel_inches * n), squeeze=False
    )
    h, w = images.shape[1:3]
    for i in range(n):
        for j, (name, grid_maps) in enumerate(columns, start=1):
            axes[i, j].imshow(images[i])
            axes[i, j].imshow(
                grid_maps[i], cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="nearest"
            )
            axes[i, j].set_title(name, fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    return fig, axes


def plot_human_alignment(result: dict, out_path: str | Path, title: str) -> Path:
    """Fig. 6 of the paper: mean cosine to the reference (C_HUM or its stand-in), +- std."""
    names = [n for n, v in result["cosine"].items() if v is not None]
    means = [result["cosine"][n]["mean"] for n in names]
    stds = [result["cosine"][n]["std"] for n in names]
    colors = ["tab:blue" if "VFM" in n else "tab:red" if "VLM" in n else "tab:green" for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.8))
    bars = ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colors)
    for bar, mean, std, name in zip(bars, means, stds, names, strict=True):
        n = result["cosine"][name]["n"]
        ax.annotate(f"{mean:.3f} +- {std:.3f}\n(n={n})",
                    (bar.get_x() + bar.get_width() / 2, mean + std),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set(ylabel=f"cosine to {result['reference']}", ylim=(0, 1.25), title=title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_path, dpi=100)
