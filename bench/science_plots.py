"""The map-fitting figure of `bench.science`: can the interaction queries fit the maps at all?

One line per swept I-ViT (alignment KL per epoch, the train-epoch mean of the loss's own term)
beside the references a map learner must beat: the KL of the box maps to a uniform map and to
the frozen attention the queries start from.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.figures import save_figure


def sweep_label(member: dict) -> str:
    blocks = "all blocks" if member.get("blocks") is None else f"last {member['blocks']}"
    return f"lambda {member['lambda']:g}, lr {member['lr']:g}, {blocks}, {member.get('rows', 'cls')} rows"


def plot_map_fitting(sweep: list[dict], references: dict, out: Path) -> Path:
    """Write the figure to `out` (PNG) and return it."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for member in sweep:
        kl = member["align_kl"]
        ax.plot(range(1, len(kl) + 1), kl, marker="o", label=sweep_label(member))
    ax.axhline(references["uniform"], color="k", linestyle="--", label="uniform map")
    ax.axhline(
        references["frozen_attention"], color="grey", linestyle=":", label="frozen attention"
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("alignment KL(C_VLM || C_AGT)")
    ax.set_title("map fitting on sample-shift (box teacher)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    return save_figure(fig, out, dpi=110)
