"""Writing matplotlib figures as PNG files, headless, the same way for every report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt


def save_figure(fig: plt.Figure, out_path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close `fig`; returns the PNG's path (its folder is created)."""
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)  # figures are made per epoch or per run: keep pyplot from accumulating them
    return out
