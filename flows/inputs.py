"""Checks of what a run needs that a user provides, made before Prefect starts, so that a
mistake is one clear message instead of a failed run (`pipeline.errors`)."""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets.registry import open_adapter
from pipeline.shards.records import INDEX_FILE


def check_shards_obtainable(
    dataset: str, split: str, shards_root: Path, root: str | Path | None = None
) -> None:
    """Shards of `dataset`/`split` exist, or can be written: a registered dataset, a split it
    has, raw data where it should be (generated on the spot for the sample dataset). Raises
    UnknownDatasetError, UnknownSplitError or DatasetMissingError."""
    if (Path(shards_root) / dataset / split / INDEX_FILE).exists():
        return  # written (or copied) already: no raw data needed
    open_adapter(dataset, split, Path(root) if root else None)
