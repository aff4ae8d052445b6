"""The dataset registry (`data/registry.json`): name -> adapter, raw location, how to obtain it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from pipeline.adapters import ADAPTERS, DatasetAdapter
from pipeline.errors import UserError
from pipeline.paths import PROJECT_ROOT, data_dir, resolve
from pipeline.sample_dataset import write_sample_dataset

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
    root = Path(root) if root else entry.default_root()
    if not root.exists():
        if entry.generated:
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
