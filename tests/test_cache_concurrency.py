"""Two real extractor processes on one entry, started together, end with one correct cache."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
from cache_fixtures import (
    GRID,
    assert_rows_equal,
    expected_maps,
    make_index,
    make_spec,
    read_arrays_plain,
    read_json_plain,
)

from pipeline.cache import CacheEntry, open_entry
from pipeline.cache.verify import verify_entry

COUNTS = (4, 4, 4, 4, 4, 4, 3)  # seven shards, the last one short
GEOMETRY = {"mode": "resize", "size": 336}


def _extractor(root: str, writer: str, use_claims: bool, start, out: str) -> None:
    """One extraction run: open the entry, then compute and commit what is still pending."""
    index = make_index(COUNTS, shard_size=4)
    start.wait()  # both processes create/open the entry at the same moment
    entry = CacheEntry.create_or_open(
        root, make_spec(index), index, grid=GRID, geometry=GEOMETRY, writer_id=writer
    )
    written, committed = [], []
    for shard in index.shards:
        if shard.name not in entry.pending_shards():
            continue
        if use_claims and not entry.claim_shard(shard.name):
            continue
        maps = expected_maps(shard)
        time.sleep(0.02)  # "compute": long enough for the other process to interleave
        written.append(shard.name)
        if entry.write_shard(shard.name, maps):
            committed.append(shard.name)
    Path(out).write_text(json.dumps({"written": written, "committed": committed}))


def _run_two(tmp_path: Path, use_claims: bool) -> tuple[str, list[dict]]:
    ctx = mp.get_context("spawn")  # a fresh interpreter each, as two separate extractions are
    start = ctx.Barrier(2)
    outs = [tmp_path / f"writer{i}.json" for i in range(2)]
    procs = [
        ctx.Process(
            target=_extractor,
            args=(str(tmp_path / "cache"), f"writer{i}", use_claims, start, str(outs[i])),
        )
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0, f"extractor exited with {proc.exitcode}"
    index = make_index(COUNTS, shard_size=4)
    entries = sorted((tmp_path / "cache").iterdir())
    assert len(entries) == 1, "both processes must land in the same entry"
    results = [json.loads(out.read_text()) for out in outs]
    _check_complete_and_correct(str(entries[0]), index, writers={"writer0", "writer1"})
    return str(entries[0]), results


def _check_complete_and_correct(entry_path: str, index, writers: set[str]) -> None:
    arrays = read_arrays_plain(entry_path)
    for shard, start in zip(index.shards, index.shard_offsets(), strict=True):
        assert_rows_equal(arrays, start, expected_maps(shard))
        record = read_json_plain(f"{entry_path}/commits/{shard.name}.json")
        assert record["writer"] in writers
        assert (record["row_start"], record["count"]) == (start, shard.count)
    assert arrays["c_vlm"].shape == (sum(COUNTS), GRID, GRID)
    entry = open_entry(entry_path)
    assert entry.pending_shards() == []
    assert verify_entry(entry) == []
    assert not list(Path(entry_path, "claims").glob("*.json")), "claims are released after commit"
    assert not list(Path(entry_path).rglob("*.partial")), "no temp files left behind"


def test_two_extractors_split_the_shards_and_commit_each_once(tmp_path: Path) -> None:
    _, results = _run_two(tmp_path, use_claims=True)
    written = [set(r["written"]) for r in results]
    names = {f"shard-{i:06d}.tar" for i in range(len(COUNTS))}
    assert written[0] | written[1] == names
    assert not written[0] & written[1], "with claims no shard is computed twice"
    assert sorted(results[0]["committed"] + results[1]["committed"]) == sorted(names)


def test_two_extractors_without_claims_still_leave_a_correct_cache(tmp_path: Path) -> None:
    # The worst case (claims disabled, as when a lease expires under a live writer): both may
    # compute every shard; whole-chunk writes of identical rows must still not corrupt anything,
    # and each shard still has exactly one commit record.
    _, results = _run_two(tmp_path, use_claims=False)
    committed = results[0]["committed"] + results[1]["committed"]
    assert sorted(committed) == sorted(f"shard-{i:06d}.tar" for i in range(len(COUNTS)))


def test_expected_rows_are_what_a_single_writer_stores(tmp_path: Path) -> None:
    # The reference used above, checked once against a plain sequential run.
    index = make_index(COUNTS, shard_size=4)
    entry = CacheEntry.create_or_open(
        str(tmp_path), make_spec(index), index, grid=GRID, geometry=GEOMETRY, writer_id="solo"
    )
    for shard in index.shards:
        entry.write_shard(shard.name, expected_maps(shard))
    arrays = read_arrays_plain(entry.path)
    assert np.isclose(
        arrays["c_vlm"][arrays["valid"]].astype(np.float64).sum(axis=(1, 2)), 1, atol=2e-3
    ).all()
    _check_complete_and_correct(entry.path, index, writers={"solo"})
