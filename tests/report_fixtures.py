"""Small shards made by hand for the map-quality tests: chosen sizes, boxes and domains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cache import CacheEntry, CacheSpec
from pipeline.datasets.adapters import AdapterResult, RawSample
from pipeline.shards.records import ShardIndex
from pipeline.shards.writer import write_shards
from teacher import TeacherConfig, load_teacher
from teacher.shard_job import extract_shard_maps

# (width, height, boxes, domain): a wide and a tall image, two boxes, and one image without any.
SAMPLES = [
    (48, 32, [(4.0, 4.0, 20.0, 20.0)], "photo"),
    (32, 48, [(10.0, 20.0, 30.0, 44.0)], "photo"),
    (40, 40, [(0.0, 0.0, 10.0, 10.0), (5.0, 5.0, 25.0, 15.0)], "sketch"),
    (40, 40, [], "sketch"),
    (64, 48, [(30.0, 10.0, 60.0, 40.0)], "sketch"),
]


def make_shards(tmp: Path, split: str = "val", shard_size: int = 2) -> tuple[Path, ShardIndex]:
    raw = tmp / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i, (w, h, boxes, domain) in enumerate(SAMPLES):
        path = raw / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        samples.append(RawSample(key=f"s{i}", path=path, label=i % 2, boxes=boxes, domain=domain))
    result = AdapterResult(classes=["cat", "dog"], class_ids=["c", "d"], samples=samples)
    out = tmp / "shards" / "toy" / split
    outcome = write_shards(result, out, "toy", split, shard_size=shard_size, progress=False)
    return out, outcome.index


def box_entry(root: str, shard_dir: Path, index: ShardIndex, kind: str = "box",
              view: str = "pad", storage_options: dict | None = None) -> CacheEntry:  # fmt: skip
    """A cache entry of a baseline teacher with every shard committed."""
    teacher = load_teacher(TeacherConfig(model=kind, view=view), vocabulary=index.classes)
    spec = CacheSpec(
        dataset=index.dataset, split=index.split, dataset_fingerprint=index.fingerprint,
        teacher=teacher.spec(),
    )  # fmt: skip
    entry = CacheEntry.create_or_open(
        root, spec, index, grid=teacher.grid, geometry=teacher.geometry_spec(),
        storage_options=storage_options,
    )  # fmt: skip
    for shard in index.shards:
        entry.write_shard(shard.name, extract_shard_maps(teacher, shard_dir / shard.name))
    return entry
