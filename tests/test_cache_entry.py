"""The map cache on a local root: key, layout, commits, readers, mismatches, verify and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from cache_fixtures import (
    CORRUPT_REASON,
    GRID,
    assert_rows_equal,
    expected_maps,
    make_index,
    make_spec,
    read_arrays_plain,
    read_json_plain,
)

from pipeline.cache import (
    CacheEntry,
    CacheMismatchError,
    ShardMaps,
    ShardNotCommittedError,
    cache_key,
    list_entries,
    open_entry,
)
from pipeline.cache.cli import add_cache_commands
from pipeline.cache.verify import verify_entry

GEOMETRY = {"mode": "resize", "size": 336}


def _create(root: Path, index=None, **teacher) -> CacheEntry:
    index = index or make_index()
    return CacheEntry.create_or_open(
        str(root), make_spec(index, **teacher), index, grid=GRID, geometry=GEOMETRY
    )


def _write_all(entry: CacheEntry, index) -> None:
    for shard in index.shards:
        assert entry.write_shard(shard.name, expected_maps(shard))


# ---- key and layout ------------------------------------------------------------------------


def test_key_is_sha256_of_canonical_spec_json_and_ignores_dict_order() -> None:
    index = make_index()
    spec = make_spec(index, layers=[0, 1])
    body = {
        "dataset": "toy",
        "split": "train",
        "dataset_fingerprint": index.fingerprint,
        "teacher": {"layers": [0, 1], "model": "tiny", "prompt": "prompt1", "quant": "none"},
        "format_version": 1,
    }
    by_hand = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert cache_key(spec) == by_hand[:16]
    reordered = make_spec(index, layers=[0, 1]).model_copy(
        update={"teacher": dict(reversed(spec.teacher.items()))}
    )
    assert cache_key(reordered) == cache_key(spec)
    assert cache_key(make_spec(index, layers=[0, 2])) != cache_key(spec)
    assert cache_key(make_spec(index, quant="4bit")) != cache_key(spec)


def test_teacher_spec_must_be_plain_json() -> None:
    with pytest.raises(ValueError, match="plain JSON"):
        make_spec(make_index(), weights=np.zeros(2))


def test_round_trip_is_readable_with_plain_zarr_and_json(tmp_path: Path) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    assert Path(entry.path) == tmp_path / cache_key(make_spec(index))
    assert entry.pending_shards() == [s.name for s in index.shards]
    _write_all(entry, index)

    manifest = read_json_plain(f"{entry.path}/manifest.json")
    assert manifest["grid"] == GRID and manifest["geometry"] == GEOMETRY
    assert manifest["spec"]["dataset_fingerprint"] == index.fingerprint
    assert [(s["name"], s["count"], s["row_offset"], s["sha256"]) for s in manifest["shards"]] == [
        ("shard-000000.tar", 3, 0, index.shards[0].sha256),
        ("shard-000001.tar", 3, 3, index.shards[1].sha256),
        ("shard-000002.tar", 2, 6, index.shards[2].sha256),
    ]
    group = zarr.open_group(f"{entry.path}/maps.zarr", mode="r")
    assert group["c_vlm"].shape == (8, GRID, GRID) and group["c_vlm"].chunks == (3, GRID, GRID)
    assert group["c_vlm"].dtype == np.float16 and group["valid"].dtype == np.bool_
    assert group["key"].chunks == (3,) and group["fg_correct"].dtype == np.int8

    arrays = read_arrays_plain(entry.path)
    for shard, start in zip(index.shards, (0, 3, 6), strict=True):
        assert_rows_equal(arrays, start, expected_maps(shard))
        record = read_json_plain(f"{entry.path}/commits/{shard.name}.json")
        invalid = sum(k.endswith("_1") for k in shard.keys)
        assert (record["row_start"], record["row_stop"], record["sha256"]) == (
            start,
            start + shard.count,
            shard.sha256,
        )
        assert record["valid"] == shard.count - invalid
        assert record["invalid_by_reason"] == {CORRUPT_REASON: invalid}

    # Our reader agrees with the plain one.
    back = open_entry(entry.path).read_shard("shard-000001.tar")
    np.testing.assert_array_equal(
        back.c_vlm, expected_maps(index.shards[1]).c_vlm.astype(np.float16)
    )
    assert (
        back.keys == index.shards[1].keys and back.reason == expected_maps(index.shards[1]).reason
    )


def test_invalid_rows_keep_their_reason_and_summary_counts_them(tmp_path: Path) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    entry.write_shard("shard-000000.tar", expected_maps(index.shards[0]))
    entry.write_shard("shard-000002.tar", expected_maps(index.shards[2]))
    rows = entry.read_shard("shard-000000.tar")
    assert rows.valid.tolist() == [True, False, True]
    assert rows.reason == ["", CORRUPT_REASON, ""]
    assert not rows.c_vlm[1].any()
    # By hand: shards 0 and 2 hold keys _0 (fg right), _1 (corrupt, unknown), _2 (fg wrong, shard 0 only).
    assert entry.summary() | {"path": None} == {
        "cache_key": entry.key,
        "path": None,
        "rows_total": 8,
        "shards_total": 3,
        "shards_committed": 2,
        "shards_pending": 1,
        "rows_written": 5,
        "rows_valid": 3,
        "rows_invalid": 2,
        "invalid_by_reason": {CORRUPT_REASON: 2},
        "fg_known": 3,
        "fg_accuracy": pytest.approx(2 / 3),
    }
    assert verify_entry(entry) == []


# ---- commits, readers and reruns ------------------------------------------------------------


def test_readers_see_committed_shards_only_and_a_rerun_redoes_an_interrupted_shard(
    tmp_path: Path,
) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    shard = index.shards[0]
    # A writer that died after writing its rows but before its commit record.
    group = zarr.open_group(f"{entry.path}/maps.zarr", mode="r+")
    group["c_vlm"][0:3] = np.full((3, GRID, GRID), 7.0, dtype=np.float16)
    group["key"][0:3] = np.array(shard.keys)

    reader = open_entry(entry.path)
    assert reader.committed_shards() == set()
    assert reader.pending_shards() == [s.name for s in index.shards]
    with pytest.raises(ShardNotCommittedError, match=r"shard-000000\.tar is not committed"):
        reader.read_shard(shard.name)
    assert verify_entry(reader) == []  # uncommitted garbage is not part of the cache

    rerun = _create(tmp_path, index)
    assert rerun.pending_shards()[0] == shard.name
    assert rerun.write_shard(shard.name, expected_maps(shard))
    assert reader.committed_shards() == {shard.name}
    assert_rows_equal(read_arrays_plain(entry.path), 0, expected_maps(shard))
    # A committed shard is never rewritten.
    assert rerun.write_shard(shard.name, expected_maps(shard)) is False


def test_claims_split_work_and_expire(tmp_path: Path) -> None:
    index = make_index()
    first = _create(tmp_path, index)
    second = CacheEntry(first.path, first.manifest, writer_id="other-writer")
    assert first.claim_shard("shard-000000.tar")
    assert first.claim_shard("shard-000000.tar")  # re-entrant for its holder
    assert not second.claim_shard("shard-000000.tar")
    assert second.claim_shard("shard-000001.tar", lease_s=-1.0)  # already expired lease
    assert first.claim_shard("shard-000001.tar")  # a dead writer's shard is taken over
    first.release_shard("shard-000000.tar")
    assert second.claim_shard("shard-000000.tar")
    second.write_shard("shard-000000.tar", expected_maps(index.shards[0]))
    assert not first.claim_shard("shard-000000.tar")  # committed: nothing left to claim
    assert not Path(first.path, "claims", "shard-000000.tar.json").exists()


# ---- bad input ------------------------------------------------------------------------------


def _bad(maps: ShardMaps, **changes) -> ShardMaps:
    return ShardMaps(**{**vars(maps), **changes})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: _bad(m, keys=list(reversed(m.keys))), "keys do not match the shard's index"),
        (lambda m: _bad(m, c_vlm=m.c_vlm * 2), "row 0 .* not a normalized"),
        (lambda m: _bad(m, reason=["", "", ""]), "row 1 .* invalid without a reason"),
        (lambda m: _bad(m, c_fore=np.full_like(m.c_fore, np.nan)), "row 0 .* c_fore is not finite"),
        (lambda m: _bad(m, c_vlm=m.c_vlm[:, :2]), "c_vlm has shape"),
        (lambda m: _bad(m, fg_correct=np.array([1, 2, 0], dtype=np.int8)), "fg_correct must be"),
    ],
)
def test_write_shard_rejects_rows_that_break_the_contract(tmp_path: Path, change, message) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    with pytest.raises(ValueError, match=rf"shard-000000.tar.*{message}"):
        entry.write_shard("shard-000000.tar", change(expected_maps(index.shards[0])))
    assert entry.committed_shards() == set()


def test_unknown_shard_is_a_clear_error(tmp_path: Path) -> None:
    entry = _create(tmp_path)
    with pytest.raises(KeyError, match=r"no shard named 'shard-000009\.tar'"):
        entry.read_shard("shard-000009.tar")


# ---- mismatches -----------------------------------------------------------------------------


def test_another_teacher_spec_gets_another_entry_never_the_old_one(tmp_path: Path) -> None:
    index = make_index()
    old = _create(tmp_path, index)
    _write_all(old, index)
    new = _create(tmp_path, index, prompt="prompt2")
    assert new.path != old.path
    assert new.pending_shards() == [s.name for s in index.shards]
    assert sorted(e.key for e in list_entries(str(tmp_path))) == sorted([old.key, new.key])


def test_spec_must_carry_the_shards_fingerprint(tmp_path: Path) -> None:
    index, other = make_index(), make_index(salt="x")
    with pytest.raises(CacheMismatchError, match=rf"{other.fingerprint}.*{index.fingerprint}"):
        CacheEntry.create_or_open(
            str(tmp_path), make_spec(other), index, grid=GRID, geometry=GEOMETRY
        )


def test_reader_of_the_wrong_entry_gets_a_clear_error(tmp_path: Path) -> None:
    index, other = make_index(), make_index(salt="x")
    entry = _create(tmp_path, index)
    with pytest.raises(
        CacheMismatchError, match=rf"fingerprint {index.fingerprint}.*{other.fingerprint}"
    ):
        open_entry(entry.path).check_matches(other)
    with pytest.raises(CacheMismatchError, match=r"another spec .*teacher\.prompt"):
        open_entry(entry.path, expect=make_spec(index, prompt="prompt3"))
    with pytest.raises(FileNotFoundError, match="no map-cache entry"):
        prompt3 = make_spec(index, prompt="prompt3")
        open_entry(f"{tmp_path}/{cache_key(prompt3)}", expect=prompt3)
    assert open_entry(entry.path, expect=make_spec(index)).key == entry.key


def test_edited_manifest_is_never_reused(tmp_path: Path) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    manifest_path = Path(entry.path, "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["spec"]["teacher"]["quant"] = "4bit"  # maps of another teacher under this key
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match="no longer hashes"):
        open_entry(entry.path)
    with pytest.raises(CacheMismatchError, match="does not match the requested entry"):
        _create(tmp_path, index)


def test_other_grid_or_geometry_is_refused(tmp_path: Path) -> None:
    index = make_index()
    _create(tmp_path, index)
    with pytest.raises(CacheMismatchError, match="grid"):
        CacheEntry.create_or_open(
            str(tmp_path), make_spec(index), index, grid=GRID + 1, geometry=GEOMETRY
        )
    with pytest.raises(CacheMismatchError, match=r"geometry\.mode"):
        CacheEntry.create_or_open(
            str(tmp_path), make_spec(index), index, grid=GRID, geometry={"mode": "pad", "size": 336}
        )


# ---- verify and the CLI ---------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_cache_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_verify_names_shard_and_row_of_each_damage(tmp_path: Path, capsys) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    _write_all(entry, index)
    assert _cli(["cache", "verify", entry.path]) == 0
    assert "OK (3 committed" in capsys.readouterr().out

    group = zarr.open_group(f"{entry.path}/maps.zarr", mode="r+")
    group["c_vlm"][3] = group["c_vlm"][3] * 2  # shard 1 row 0: no longer sums to 1
    # shard 2 row 1: invalid without a reason (the chunk is then all fill value: kept stored)
    group["reason"].with_config({"write_empty_chunks": True})[7] = ""
    record_path = Path(entry.path, "commits", "shard-000000.tar.json")
    record = json.loads(record_path.read_text())
    record["valid"] = 3
    record_path.write_text(json.dumps(record))

    problems = [str(p) for p in verify_entry(open_entry(entry.path))]
    assert any(
        p.startswith("shard-000001.tar row 0 (global 3") and "sums to 1.99" in p for p in problems
    )
    assert any(
        p.startswith("shard-000002.tar row 1 (global 7") and "without a reason" in p
        for p in problems
    )
    assert any(p.startswith("shard-000000.tar:") and "valid=3" in p for p in problems)
    assert _cli(["cache", "verify", entry.path]) == 1
    out = capsys.readouterr().out
    assert "shard-000001.tar row 0" in out and "problem(s)" in out


def test_verify_against_the_shard_index(tmp_path: Path, capsys) -> None:
    index = make_index()
    entry = _create(tmp_path / "cache", index)
    _write_all(entry, index)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    (shard_dir / "index.json").write_text(index.model_dump_json())
    assert _cli(["cache", "verify", entry.path, "--shards", str(shard_dir)]) == 0
    other = make_index(salt="x")
    (shard_dir / "index.json").write_text(other.model_dump_json())
    assert _cli(["cache", "verify", entry.path, "--shards", str(shard_dir)]) == 1
    assert other.fingerprint in capsys.readouterr().out


def test_ls_and_show_print_entries_and_shard_states(tmp_path: Path, capsys) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    entry.write_shard("shard-000001.tar", expected_maps(index.shards[1]))
    assert _cli(["cache", "ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert entry.key in out and "toy/train" in out and "1/3" in out

    assert _cli(["cache", "show", entry.path]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[0]: line.split()[2] for line in lines if line.startswith("shard-")}
    assert states == {
        "shard-000000.tar": "pending",
        "shard-000001.tar": "committed",
        "shard-000002.tar": "pending",
    }

    assert _cli(["cache", "show", str(tmp_path / "nope")]) == 2
    assert "no map-cache entry" in capsys.readouterr().err


def test_from_results_stacks_teacher_results_in_order(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class FakeMapResult:  # the teacher's MapResult fields that the cache stores
        key: str
        c_vlm: np.ndarray
        c_fore: np.ndarray
        c_back: np.ndarray
        valid: bool
        reason: str
        answer: str
        fg_correct: int

    index = make_index()
    want = expected_maps(index.shards[0])
    results = [
        FakeMapResult(
            key=want.keys[i],
            c_vlm=want.c_vlm[i],
            c_fore=want.c_fore[i],
            c_back=want.c_back[i],
            valid=bool(want.valid[i]),
            reason=want.reason[i],
            answer=want.answer[i],
            fg_correct=int(want.fg_correct[i]),
        )
        for i in range(3)
    ]
    entry = _create(tmp_path, index)
    assert entry.write_shard("shard-000000.tar", ShardMaps.from_results(results))
    assert_rows_equal(read_arrays_plain(entry.path), 0, want)


def test_open_entry_with_an_index_checks_it_and_keys(tmp_path: Path) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    with pytest.raises(CacheMismatchError, match="fingerprint"):
        open_entry(entry.path, index=make_index(salt="x"))
    task_side = open_entry(entry.path, index=index)  # what a flow task holding only paths does
    shuffled = expected_maps(index.shards[1])
    shuffled.keys = shuffled.keys[::-1]
    with pytest.raises(ValueError, match="keys do not match"):
        task_side.write_shard("shard-000001.tar", shuffled)


def test_verify_reports_stray_commit_records(tmp_path: Path) -> None:
    entry = _create(tmp_path)
    Path(entry.path, "commits").mkdir()
    Path(entry.path, "commits", "shard-000042.tar.json").write_text("{}")
    assert [p.where for p in verify_entry(open_entry(entry.path))] == [
        "commits/shard-000042.tar.json"
    ]


def test_a_writer_dying_mid_shard_leaves_it_pending(tmp_path: Path, monkeypatch) -> None:
    index = make_index()
    entry = _create(tmp_path, index)
    real_setitem = zarr.Array.__setitem__
    calls = []

    def dies_on_fourth_array(self, selection, value):
        calls.append(self.path)
        if len(calls) == 4:
            raise KeyboardInterrupt("writer killed")
        return real_setitem(self, selection, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", dies_on_fourth_array)
    with pytest.raises(KeyboardInterrupt):
        entry.write_shard("shard-000000.tar", expected_maps(index.shards[0]))
    monkeypatch.setattr(zarr.Array, "__setitem__", real_setitem)
    assert len(calls) == 4 and not Path(entry.path, "commits", "shard-000000.tar.json").exists()
    assert open_entry(entry.path).pending_shards()[0] == "shard-000000.tar"
    with pytest.raises(ShardNotCommittedError):
        open_entry(entry.path).read_shard("shard-000000.tar")
    assert _create(tmp_path, index).write_shard("shard-000000.tar", expected_maps(index.shards[0]))
    assert_rows_equal(read_arrays_plain(entry.path), 0, expected_maps(index.shards[0]))


def _claim_file(entry: CacheEntry, shard_name: str, **body) -> None:
    path = Path(entry.path, "claims", f"{shard_name}.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps({"writer": "someone-else", "expires_at": time.time() + 3600, **body})
    )


def test_claims_of_dead_processes_are_taken_over_and_live_ones_respected(tmp_path: Path) -> None:
    entry = _create(tmp_path)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    _claim_file(entry, "shard-000000.tar", host=socket.gethostname(), pid=int(finished.stdout))
    _claim_file(entry, "shard-000001.tar", host=socket.gethostname(), pid=os.getpid())
    _claim_file(entry, "shard-000002.tar", host="another-machine", pid=1)
    assert entry.claim_shard("shard-000000.tar")  # its process has exited
    assert not entry.claim_shard("shard-000001.tar")  # alive on this host
    assert not entry.claim_shard("shard-000002.tar")  # another host, lease not expired


def test_claim_context_releases_when_the_computation_fails(tmp_path: Path) -> None:
    entry = _create(tmp_path)
    other = CacheEntry(entry.path, entry.manifest, writer_id="other-writer")
    with pytest.raises(RuntimeError), entry.claim("shard-000000.tar") as mine:
        assert mine and not other.claim_shard("shard-000000.tar")
        raise RuntimeError("teacher failed")
    assert other.claim_shard("shard-000000.tar")
