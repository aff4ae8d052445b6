"""Reading shards back (docs/design.md) with webdataset's own tar reader.

A sample in a shard is `<key>.<img ext>` (the original image bytes) plus `<key>.json`
(a SampleRecord). Consumers that stream (the student loader) use webdataset pipelines directly;
this module serves consumers that work shard by shard (the teacher, the cache, tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import IMAGE_EXTENSIONS
from pipeline.shards.records import SampleRecord


@dataclass(frozen=True)
class ShardSample:
    key: str
    image_bytes: bytes
    image_ext: str
    record: SampleRecord


def image_member(sample: dict) -> tuple[str, bytes]:
    """The (extension, bytes) of a raw webdataset sample's image member."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    raise KeyError(f"sample {sample.get('__key__')!r} has no image member ({sorted(sample)})")


def iter_shard(tar_path: str | Path) -> Iterator[ShardSample]:
    """Samples of one shard, in stored order."""
    # Imported here: webdataset imports torch (seconds); reading an index or a record does not.
    import webdataset as wds

    dataset = wds.WebDataset(str(tar_path), shardshuffle=False, empty_check=False)
    for raw in dataset:
        ext, data = image_member(raw)
        yield ShardSample(
            key=raw["__key__"],
            image_bytes=data,
            image_ext=ext,
            record=SampleRecord.model_validate_json(raw["json"]),
        )
