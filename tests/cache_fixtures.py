"""Tiny inputs and plain readers shared by the map-cache tests (no tests of its own).

Expected values come from here, computed from the keys alone, and stored values are read back
with plain `zarr` and `json`, never through pipeline.cache, so the tests compare the cache with
an independent reference.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
import numpy as np
import zarr

from pipeline.cache import CacheSpec, ShardMaps
from pipeline.shards.records import ShardIndex, ShardInfo

GRID = 4
CORRUPT_REASON = "image unreadable: cannot identify image file"


def make_index(
    counts: tuple[int, ...] = (3, 3, 2), shard_size: int = 3, salt: str = ""
) -> ShardIndex:
    shards = [
        ShardInfo(
            name=f"shard-{i:06d}.tar",
            count=count,
            sha256=hashlib.sha256(f"shard{i}{salt}".encode()).hexdigest(),
            keys=[f"img{salt}_{i}_{j}" for j in range(count)],
        )
        for i, count in enumerate(counts)
    ]
    index = ShardIndex(
        dataset="toy",
        split="train",
        shard_size=shard_size,
        classes=["cat"],
        class_ids=["n0"],
        shards=shards,
    )
    index.fingerprint = index.compute_fingerprint()
    return index


def make_spec(index: ShardIndex, **teacher: Any) -> CacheSpec:
    return CacheSpec(
        dataset=index.dataset,
        split=index.split,
        dataset_fingerprint=index.fingerprint,
        teacher={"model": "tiny", "quant": "none", "prompt": "prompt1", **teacher},
    )


def is_corrupt(key: str) -> bool:
    """Every row whose key ends in _1 plays a corrupt image (one per shard)."""
    return key.endswith("_1")


def expected_maps(shard: ShardInfo, grid: int = GRID) -> ShardMaps:
    """Deterministic rows for a shard, a function of the keys only (as a real teacher is)."""
    rows = []
    for key in shard.keys:
        rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
        fore = rng.random((grid, grid)).astype(np.float32)
        back = rng.random((grid, grid)).astype(np.float32) * 0.5
        diff = np.maximum(fore - back, 0)
        corrupt = is_corrupt(key)
        rows.append(
            dict(
                c_vlm=np.zeros_like(diff) if corrupt else diff / diff.sum(),
                c_fore=np.zeros_like(fore) if corrupt else fore,
                c_back=np.zeros_like(back) if corrupt else back,
                valid=not corrupt,
                reason=CORRUPT_REASON if corrupt else "",
                answer="" if corrupt else f"{{'foreground': 'cat', 'background': 'grass {key}'}}",
                fg=-1 if corrupt else int(key.endswith("_0")),
            )
        )
    return ShardMaps(
        keys=list(shard.keys),
        c_vlm=np.stack([r["c_vlm"] for r in rows]),
        c_fore=np.stack([r["c_fore"] for r in rows]),
        c_back=np.stack([r["c_back"] for r in rows]),
        valid=np.array([r["valid"] for r in rows]),
        reason=[r["reason"] for r in rows],
        answer=[r["answer"] for r in rows],
        fg_correct=np.array([r["fg"] for r in rows], dtype=np.int8),
    )


def read_json_plain(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        return json.load(f)


def read_arrays_plain(
    entry_url: str, storage_options: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Every array of an entry, read with plain zarr (what another team would do)."""
    group = zarr.open_group(f"{entry_url}/maps.zarr", mode="r", storage_options=storage_options)
    return {name: array[:] for name, array in group.arrays()}


def assert_rows_equal(arrays: dict[str, np.ndarray], start: int, maps: ShardMaps) -> None:
    stop = start + len(maps)
    for name in ("c_vlm", "c_fore", "c_back"):
        np.testing.assert_array_equal(
            arrays[name][start:stop], getattr(maps, name).astype(np.float16)
        )
    np.testing.assert_array_equal(arrays["valid"][start:stop], maps.valid)
    np.testing.assert_array_equal(arrays["fg_correct"][start:stop], maps.fg_correct)
    assert arrays["key"][start:stop].tolist() == maps.keys
    assert arrays["reason"][start:stop].tolist() == maps.reason
    assert arrays["answer"][start:stop].tolist() == maps.answer
