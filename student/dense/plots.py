"""Pictures of a dense run: loss terms and COCO mAP per epoch; per image the predictions (with
the ground truth), C_VLM and C_AGT over the image."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from pipeline.figures import save_figure  # selects the Agg backend
from student.plots import map_overlay_grid, read_metrics


def plot_dense_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    rows = read_metrics(metrics_path)
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    loss_keys = sorted({k for r in rows for k in r if k.startswith(("train_loss", "train_align"))})
    for key in [*loss_keys, "val_loss"]:
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker="o", label=key)
    for key in ("val_bbox_mAP", "val_bbox_AP50", "val_segm_mAP"):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax_map.plot(*zip(*points, strict=True), marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="DETR terms + align", yscale="log")
    ax_map.set(xlabel="epoch", ylabel="COCO AP", title="validation", ylim=(0, 1))
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out_path, dpi=100)


def plot_dense_overlays(
    out_path: str | Path,
    images: np.ndarray,
    predictions: list[dict],
    truths: list[dict],
    maps: dict[str, np.ndarray | None],
    class_names: list[str],
    titles: list[str] | None = None,
    min_score: float = 0.3,
) -> Path:
    """Per row: the image with predicted boxes (solid, score >= min_score; masks tinted) and
    ground-truth boxes (dashed), then each map. Boxes are in the shown image's pixels."""
    fig, axes = map_overlay_grid(images, maps, panel_inches=2.6)
    h, w = images.shape[1:3]
    colors = plt.get_cmap("tab10")
    for i in range(images.shape[0]):
        ax = axes[i, 0]
        ax.imshow(images[i])
        for x0, y0, x1, y1 in truths[i]["boxes"]:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", ec="w"))
        pred = predictions[i]
        for k, (score, label) in enumerate(zip(pred["scores"], pred["labels"], strict=True)):
            if score < min_score:
                continue
            x0, y0, x1, y1 = pred["boxes"][k]
            color = colors(int(label) % 10)
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.5))
            ax.text(x0, y0, f"{class_names[label]} {score:.2f}", fontsize=6, color=color)
            if pred.get("masks") is not None:
                tint = np.zeros((h, w, 4))
                tint[pred["masks"][k] > 0] = (*color[:3], 0.35)
                ax.imshow(tint)
        ax.set_title(titles[i] if titles else "predictions", fontsize=8)
    return save_figure(fig, out_path, dpi=80)
