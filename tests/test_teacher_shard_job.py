"""A shard through the tiny teacher into the map cache, read back with plain zarr; previews."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import teacher_fixtures
import zarr
from PIL import Image
from teacher_fixtures import make_teacher

from pipeline.cache import CacheEntry, CacheSpec
from pipeline.datasets.generated import write_sample_dataset
from pipeline.shards.build import build_shards
from pipeline.shards.config import ShardsConfig
from teacher.previews import save_previews
from teacher.shard_job import extract_shard_maps

tiny_dir = teacher_fixtures.tiny_dir  # session fixture


def test_shard_to_cache_and_previews(tiny_dir, tmp_path):
    write_sample_dataset(tmp_path / "raw", train_per_class=1, val_per_class=1)
    config = ShardsConfig(
        dataset="sample", split="train", root=tmp_path / "raw", shards=tmp_path / "shards",
        shard_size=6,
    )  # fmt: skip
    index = build_shards(config, progress=False).index
    teacher = make_teacher(tiny_dir, vocabulary=index.classes, audit=True, batch_size=4)
    spec = CacheSpec(
        dataset=index.dataset, split=index.split, dataset_fingerprint=index.fingerprint,
        teacher=teacher.spec(),
    )  # fmt: skip
    entry = CacheEntry.create_or_open(
        str(tmp_path / "cache"), spec, index, grid=teacher.grid, geometry=teacher.geometry_spec()
    )
    first = index.shards[0]
    maps = extract_shard_maps(teacher, config.shard_dir() / first.name, entry)
    assert maps.keys == first.keys and maps.c_vlm.shape == (first.count, 24, 24)
    entry.write_shard(first.name, maps)

    # Plain zarr + json, without this project: row r of shard 0 is row r of the arrays.
    group = zarr.open_group(f"{entry.path}/maps.zarr", mode="r")
    stored = np.asarray(group["c_vlm"][: first.count], np.float32)
    np.testing.assert_allclose(stored, maps.c_vlm, atol=1e-3)  # float16 storage
    assert np.allclose(stored[maps.valid].sum(axis=(1, 2)), 1.0, atol=1e-2)
    manifest = json.loads((tmp_path / "cache" / entry.key / "manifest.json").read_text())
    assert manifest["geometry"] == {"mode": "pad", "size": 336, "grid": 24}

    audit_lines = (
        (Path(entry.path) / "audit" / f"{first.name}.audit.jsonl").read_text().splitlines()
    )
    assert [json.loads(line)["key"] for line in audit_lines] == first.keys

    saved = save_previews(entry, config.shard_dir(), count=2)
    assert len(saved) == 2
    preview = Image.open(saved[0])
    assert preview.size == (4 * 336, 336)  # view with boxes | C_fore | C_back | C_VLM
    view = np.asarray(preview.convert("RGB"))[:, :336]
    assert (view == (255, 0, 0)).all(axis=-1).any()  # the box outline is drawn in pure red
