"""Typed records of the shard contract (docs/design.md): one sample's metadata and the shard index.

These are the only shapes that cross from the dataset adapters into the teacher and student
stages, so they live here, below every other package.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from pipeline.errors import BadInputDataError, MissingInputError
from pipeline.io import canonical_json

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original-image pixels
# {"size": [height, width], "counts": "<COCO compressed RLE>"}: pycocotools.mask.decode reads it
MaskRLE = dict[str, Any]

INDEX_FILE = "index.json"
INDEX_FORMAT = 1


class SampleRecord(BaseModel):
    """The `json` member of every shard sample."""

    label: int = Field(ge=0, description="index into ShardIndex.classes")
    class_name: str = Field(description="human-readable class name (e.g. from words.txt)")
    boxes: list[Box] = Field(default_factory=list, description="[x0, y0, x1, y1] in pixels")
    box_labels: list[int] = Field(
        default_factory=list, description="class index of each box (empty: all are `label`)"
    )
    masks: list[MaskRLE] = Field(
        default_factory=list,
        description="instance masks, one per box in box order, COCO compressed RLE (pipeline.shards.masks)",
    )
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    source: str = Field(description="path of the image inside the raw dataset")
    domain: str | None = Field(default=None, description="domain name for domain-shift sets")
    repairs: list[str] = Field(default_factory=list, description="honest fixes applied")


class ShardInfo(BaseModel):
    name: str
    count: int
    sha256: str
    keys: list[str]


class SkippedSample(BaseModel):
    source: str
    reason: str


class ShardIndex(BaseModel):
    """`index.json` next to the shards; its content hash is the dataset fingerprint."""

    format: int = INDEX_FORMAT
    dataset: str
    split: str
    shard_size: int
    classes: list[str] = Field(description="human class names, position = label")
    class_ids: list[str] = Field(description="dataset-native ids (wnids, folder names, COCO ids)")
    shards: list[ShardInfo]
    skipped: list[SkippedSample] = Field(default_factory=list)
    repaired: list[SkippedSample] = Field(default_factory=list, description="kept, with a fix")
    source_fingerprint: str = Field(
        default="", description="hash of the raw files' names, sizes and mtimes (rerun check)"
    )
    fingerprint: str = ""

    def compute_fingerprint(self) -> str:
        """sha256 over everything that defines the samples.

        The source listing is left out on purpose: touching a raw file must not invalidate
        every cache built on shards whose bytes did not change.
        """
        body = self.model_dump(exclude={"fingerprint", "source_fingerprint"})
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    def shard_offsets(self) -> list[int]:
        """Row of each shard's first sample in row-aligned arrays (the map cache)."""
        offsets, total = [], 0
        for shard in self.shards:
            offsets.append(total)
            total += shard.count
        return offsets


def read_index(shard_dir: str | Path) -> ShardIndex:
    """Load and verify `index.json`; a tampered or stale index is an error, not a guess."""
    path = Path(shard_dir) / INDEX_FILE
    if not path.exists():
        raise MissingInputError(
            f"no shard index at {path}; write the shards first (make shards DATASET=...)"
        )
    index = ShardIndex.model_validate_json(path.read_text())
    if index.fingerprint != index.compute_fingerprint():
        raise BadInputDataError(
            f"{path}: fingerprint does not match its content (edited or damaged); rewrite the "
            f"shards: make shards DATASET={index.dataset} SPLIT={index.split}"
        )
    return index
