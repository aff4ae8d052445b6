"""Tiny shards and a tiny map cache for the loader and distributed tests (no tests in here).

Shards are written with plain `webdataset.TarWriter`; every image is left-bright / right-dark so
a horizontal flip is visible in the pixels, and every key gets its own random teacher map, so a
map delivered to the wrong sample cannot go unnoticed.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.cache import CacheEntry, CacheSpec, ShardMaps
from pipeline.shards.records import ShardIndex, ShardInfo

IMAGE_SIZE = 32
TEACHER_GRID = 8  # 4 px cells over a 32 px image


@dataclass
class ToySplit:
    split_dir: Path
    index: ShardIndex
    keys: list[str]
    labels: dict[str, int]


def key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def toy_image(key: str, width: int = IMAGE_SIZE, height: int = IMAGE_SIZE) -> bytes:
    rng = np.random.default_rng(key_seed(key))
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = 200 + rng.integers(0, 50)  # bright left half
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def teacher_map_for(key: str) -> np.ndarray:
    """A distinct, strictly positive map per key (a fingerprint of the key)."""
    rng = np.random.default_rng(key_seed(key))
    values = rng.random((TEACHER_GRID, TEACHER_GRID)) + 0.05
    return (values / values.sum()).astype(np.float32)


def write_toy_split(
    root: Path,
    shards: int = 3,
    per_shard: int = 8,
    split: str = "train",
    dataset: str = "toy",
    key_prefix: str = "s",
    width: int = IMAGE_SIZE,
    height: int = IMAGE_SIZE,
) -> ToySplit:
    split_dir = root / dataset / split
    split_dir.mkdir(parents=True, exist_ok=True)
    infos, all_keys, labels = [], [], {}
    for shard in range(shards):
        name = f"shard-{shard:06d}.tar"
        keys = [f"{key_prefix}{shard:02d}_{i:03d}" for i in range(per_shard)]
        with wds.TarWriter(str(split_dir / name)) as sink:
            for i, key in enumerate(keys):
                label = (shard * per_shard + i) % 3
                labels[key] = label
                record = {
                    "label": label,
                    "class_name": f"class{label}",
                    "boxes": [[8, 8, 24, 24]],
                    "width": width,
                    "height": height,
                    "source": f"{key}.png",
                    "domain": "photo" if i % 2 else "sketch",
                }
                image = toy_image(key, width, height)
                sink.write({"__key__": key, "png": image, "json": json.dumps(record)})
        digest = hashlib.sha256((split_dir / name).read_bytes()).hexdigest()
        infos.append(ShardInfo(name=name, count=len(keys), sha256=digest, keys=keys))
        all_keys += keys
    index = ShardIndex(
        dataset=dataset,
        split=split,
        shard_size=per_shard,
        classes=["class0", "class1", "class2"],
        class_ids=["c0", "c1", "c2"],
        shards=infos,
    )
    index.fingerprint = index.compute_fingerprint()
    (split_dir / "index.json").write_text(index.model_dump_json(indent=1))
    return ToySplit(split_dir, index, all_keys, labels)


def is_invalid_row(key: str) -> bool:
    """Every fifth key is a row the teacher could not map."""
    return key_seed(key) % 5 == 0


def write_toy_cache(
    root: Path,
    toy: ToySplit,
    commit: int | None = None,
    geometry: dict | None = None,
    storage_options: dict | None = None,
) -> CacheEntry:
    """A cache entry for `toy`, with only its first `commit` shards committed (None: all).

    `geometry` is the teacher view the maps are on (default: the square image stretched)."""
    spec = CacheSpec(
        dataset=toy.index.dataset,
        split=toy.index.split,
        dataset_fingerprint=toy.index.fingerprint,
        teacher={"model": "toy-teacher"},
    )
    entry = CacheEntry.create_or_open(
        str(root),
        spec,
        toy.index,
        grid=TEACHER_GRID,
        geometry=geometry or {"mode": "resize", "size": IMAGE_SIZE},
        storage_options=storage_options,
    )
    shards = toy.index.shards if commit is None else toy.index.shards[:commit]
    for shard in shards:
        invalid = [is_invalid_row(k) for k in shard.keys]
        c_vlm = np.stack(
            [
                np.zeros((TEACHER_GRID,) * 2, np.float32) if bad else teacher_map_for(k)
                for k, bad in zip(shard.keys, invalid, strict=True)
            ]
        )
        maps = ShardMaps(
            keys=list(shard.keys),
            c_vlm=c_vlm,
            c_fore=c_vlm,
            c_back=np.zeros_like(c_vlm),
            valid=~np.array(invalid),
            reason=["no positive mass" if bad else "" for bad in invalid],
            answer=["toy"] * len(shard.keys),
            fg_correct=np.ones(len(shard.keys), np.int8),
        )
        entry.write_shard(shard.name, maps)
    return entry
