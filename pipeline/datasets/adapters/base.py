"""What every adapter yields, and the small helpers they share."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.shards.records import Box, MaskRLE, SkippedSample


@dataclass
class RawSample:
    """One sample as the raw dataset describes it; image bytes are read later, lazily."""

    key: str
    path: Path
    label: int
    boxes: list[Box] = field(default_factory=list)
    box_labels: list[int] = field(default_factory=list)
    masks: list[MaskRLE] = field(default_factory=list)  # COCO RLE per box (pipeline.shards.masks)
    domain: str | None = None
    notes: list[str] = field(default_factory=list)  # annotation-level repairs (e.g. no box file)


@dataclass
class AdapterResult:
    classes: list[str]  # human names, position = label
    class_ids: list[str]  # dataset-native ids
    samples: list[RawSample]
    skipped: list[SkippedSample] = field(default_factory=list)  # annotation-level skips
    annotation_files: list[Path] = field(default_factory=list)  # hashed into the source listing


class DatasetAdapter(ABC):
    """Reads one dataset layout under `root`; `split` picks a part of it."""

    def __init__(self, root: Path, split: str, **options: object) -> None:
        self.root = Path(root)
        self.split = split
        self.options = options

    @abstractmethod
    def splits(self) -> list[str]:
        """The split names this dataset offers."""

    @abstractmethod
    def load(self) -> AdapterResult:
        """List the split's samples, with labels and boxes, without reading image bytes."""

    def check_split(self) -> None:
        if self.split not in self.splits():
            raise ValueError(
                f"unknown split {self.split!r} for {self.root}; choose one of {self.splits()}"
            )


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(*parts: str) -> str:
    """A webdataset key: stable, no dots (webdataset splits keys at the first dot)."""
    return "_".join(_UNSAFE.sub("-", p).strip("-") for p in parts if p)
