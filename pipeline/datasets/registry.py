"""The dataset registry (`data/registry.json`): name -> adapter, raw location, how to obtain it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from pipeline.datasets.adapters import ADAPTERS, DatasetAdapter
from pipeline.datasets.generated import write_sample_dataset
from pipeline.datasets.shift import check_shift_dataset, write_shift_dataset
from pipeline.errors import UserError
from pipeline.paths import PROJECT_ROOT, data_dir, resolve

REGISTRY_FILE = PROJECT_ROOT / "data" / "registry.json"


class DatasetEntry(BaseModel):
    name: str
    adapter: str
    root: str
    splits: list[str]
    source: str
    obtain: str
    classes: str
    generated: bool = False
    generator: Literal["sample", "sample-coco", "sample-shift", "sample-spot"] = (
        "sample"  # which one writes it
    )
    # detection: boxes with categories (and masks) for dense students; extraction defaults to
    # the dense prompt (Eq. 12)
    task: Literal["classification", "detection"] = "classification"

    def default_root(self) -> Path:
        # A relocated data dir (LFI_DATA_DIR) moves raw data with it.
        relative = Path(self.root)
        if relative.parts[:1] == ("data",):
            return data_dir().joinpath(*relative.parts[1:])
        return resolve(relative)


class DatasetMissingError(UserError, FileNotFoundError):
    """A registered dataset's raw folder is not there; the message says how to obtain it."""


class UnknownDatasetError(UserError, KeyError):
    """A name that data/registry.json does not hold."""


class UnknownSplitError(UserError, ValueError):
    """A split the dataset does not have."""


@cache
def load_registry() -> dict[str, DatasetEntry]:
    raw = json.loads(REGISTRY_FILE.read_text())
    return {name: DatasetEntry(name=name, **fields) for name, fields in raw.items()}


def get_entry(name: str) -> DatasetEntry:
    registry = load_registry()
    if name not in registry:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; registered: {', '.join(sorted(registry))} ({REGISTRY_FILE})"
        )
    return registry[name]


def open_adapter(name: str, split: str, root: Path | None = None) -> tuple[DatasetAdapter, Path]:
    """The adapter for `name` reading `root` (default: the registry's location)."""
    entry = get_entry(name)
    if root is None and entry.generator == "sample-shift" and entry.default_root().exists():
        # The default folder may hold an older generator's data; a given root is the caller's
        # own variant (tests and bench.science write smaller or other-correlation copies).
        check_shift_dataset(entry.default_root())
    root = Path(root) if root else entry.default_root()
    if not root.exists():
        if entry.generated and entry.generator == "sample-shift":
            write_shift_dataset(root)
        elif entry.generated and entry.generator == "sample-spot":
            from pipeline.datasets.spot import write_spot_dataset

            write_spot_dataset(root)
        elif entry.generated and entry.generator == "sample-coco":
            from pipeline.datasets.sample_coco import write_sample_coco

            write_sample_coco(root)
        elif entry.generated:
            write_sample_dataset(root)
        else:
            raise DatasetMissingError(
                f"dataset {name!r} was expected at {root} but that folder does not exist.\n"
                f"  Obtain it: {entry.obtain}\n"
                f"  Source:    {entry.source}\n"
                f"  Or point at an existing copy: make shards DATASET={name} ROOT=/path/to/it"
            )
    if split not in entry.splits and entry.adapter != "imagefolder":
        raise UnknownSplitError(f"dataset {name!r} has splits {entry.splits}, not {split!r}")
    return ADAPTERS[entry.adapter](root, split), root
