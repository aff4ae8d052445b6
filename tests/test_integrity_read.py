"""What the cache and the loader check on every read (issue 22), on toy shards: checksums in the
stored metadata (read with plain json), damage found inside a loader worker reaching the user as
one line, `skip_bad_rows`, and entries made before checksums still read and verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import zarr
from loader_fixtures import write_toy_cache, write_toy_split
from zarr.codecs import ZstdCodec

import pipeline.cache.manifest
from pipeline.cache.integrity import DamagedCacheError
from pipeline.cli import main as pipeline_cli
from student.loader import LoaderConfig, build_loader

torch.set_num_threads(1)
ARRAYS = ("c_vlm", "c_fore", "c_back", "valid", "fg_correct", "key", "reason", "answer")


def make_loader(toy, entry_path: str, num_workers: int, **options) -> object:
    return build_loader(
        LoaderConfig(
            shard_dir=toy.split_dir, split="train", cache_entry=entry_path, batch_size=4,
            train=False, num_workers=num_workers, img_size=16, patch_size=4,
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **options,
        )
    )  # fmt: skip


def samples(loader) -> dict[str, tuple[bool, torch.Tensor]]:
    out = {}
    for batch in loader:
        for i, key in enumerate(batch["key"]):
            out[key] = (bool(batch["map_valid"][i]), batch["c_vlm"][i])
    return out


@pytest.fixture
def toy(tmp_path):
    return write_toy_split(tmp_path / "shards", shards=3, per_shard=4)


def test_every_array_of_a_new_entry_has_a_crc32c_and_every_chunk_is_stored(tmp_path, toy) -> None:
    entry = Path(write_toy_cache(tmp_path / "cache", toy).path)
    for name in ARRAYS:
        meta = json.loads((entry / "maps.zarr" / name / "zarr.json").read_text())
        assert [c["name"] for c in meta["codecs"]][-1] == "crc32c", name
        # one chunk per shard, also where it equals the fill value (all reasons "")
        assert len([p for p in (entry / "maps.zarr" / name / "c").rglob("*") if p.is_file()]) == 3


def test_a_chunk_damaged_under_a_worker_stops_the_loader_with_one_line(tmp_path, toy) -> None:
    entry = write_toy_cache(tmp_path / "cache", toy)
    loader = make_loader(toy, entry.path, num_workers=1)  # opened while the entry was sound
    chunk = Path(entry.path) / "maps.zarr" / "c_vlm" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(DamagedCacheError) as caught:
        samples(loader)
    message = str(caught.value)
    assert "\n" not in message  # the worker's traceback is not part of what the user reads
    for part in (entry.path, "shard-000001.tar rows 4-7", "does not decode", "--repair"):
        assert part in message, message


@pytest.mark.slow
def test_an_unnormalized_valid_row_stops_the_loader_or_is_skipped_when_asked(tmp_path, toy):
    entry = write_toy_cache(tmp_path / "cache", toy)
    group = zarr.open_group(f"{entry.path}/maps.zarr", mode="r+")
    row = next(i for i in range(12) if group["valid"][i])  # a valid row; its chunk re-checksummed
    key = str(group["key"][row])
    group["c_vlm"][row] = group["c_vlm"][row] * 3
    with pytest.raises(DamagedCacheError, match="not a normalized non-negative map"):
        samples(make_loader(toy, entry.path, num_workers=0))
    seen = samples(make_loader(toy, entry.path, num_workers=0, skip_bad_rows=True))
    assert len(seen) == 12
    assert seen[key][0] is False and (seen[key][1] == 0).all()  # left out of the alignment
    assert sum(valid for valid, _ in seen.values()) >= 1


def test_an_entry_made_before_checksums_reads_and_verifies_as_unchecksummed(
    tmp_path, toy, monkeypatch, capsys
) -> None:
    # Zarr's default codecs, as entries were written before checksums; such writers also left
    # out chunks equal to the fill value (here shard 0's all-empty reasons).
    monkeypatch.setattr(
        pipeline.cache.manifest, "chunk_compressors", lambda: (ZstdCodec(level=0, checksum=False),)
    )
    entry = write_toy_cache(tmp_path / "cache", toy)
    reasons = zarr.open_group(f"{entry.path}/maps.zarr", mode="r")["reason"][:]
    all_valid = [shard for shard in range(3) if not any(reasons[4 * shard : 4 * shard + 4])]
    assert all_valid  # the toy data has a shard without invalid rows
    for shard in all_valid:
        (Path(entry.path) / "maps.zarr" / "reason" / "c" / str(shard)).unlink()
    assert pipeline_cli(["cache", "verify", entry.path]) == 0
    out = capsys.readouterr().out
    assert f"note: unchecksummed: {', '.join(sorted(ARRAYS))}" in out
    assert "OK (3 committed" in out
    assert len(samples(make_loader(toy, entry.path, num_workers=0))) == 12
