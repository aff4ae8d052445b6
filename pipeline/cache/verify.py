"""Checking a map-cache entry against its own manifest and commit records (`cache verify`).

Reads with plain zarr and json only, so it also catches damage done by tools other than ours:
arrays whose metadata drifted from the manifest, commit records that disagree with their rows,
and committed rows that are neither a normalized map nor an invalid row with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.cache.entry import CacheEntry, ShardNotCommittedError
from pipeline.cache.integrity import read_checked
from pipeline.cache.rows import (
    MAP_ARRAYS,
    NORMALIZED_ATOL_STORED,
    ROW_ARRAYS,
    row_counts,
    row_problems,
)
from pipeline.cache.spec import CacheMismatchError


@dataclass(frozen=True)
class Problem:
    where: str  # "manifest", an array name, or a shard name with its row
    message: str
    shard: str | None = None  # the committed shard it concerns (what `--repair` recomputes)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def verify_entry(entry: CacheEntry) -> list[Problem]:
    """Every disagreement found; an empty list means the entry is sound."""
    try:
        entry.check_arrays()
    except CacheMismatchError as err:
        return [Problem("arrays", str(err))]
    problems = [
        Problem(f"commits/{name}", "commit record for a shard the manifest does not list")
        for name in entry.foreign_commits()
    ]
    for shard_name in sorted(entry.committed_shards(), key=entry.shard_names.index):
        problems += [
            Problem(p.where, p.message, shard_name) for p in _verify_shard(entry, shard_name)
        ]
    return problems


def _verify_shard(entry: CacheEntry, shard_name: str) -> list[Problem]:
    start, stop = entry.shard_rows(shard_name)
    info = next(s for s in entry.manifest["shards"] if s["name"] == shard_name)
    try:
        record = entry.commit_record(shard_name)
    except (ShardNotCommittedError, ValueError) as err:
        return [Problem(shard_name, f"commit record unreadable ({err})")]
    # Every array's chunk of this shard, read once: a chunk that is missing or fails its
    # checksum makes the row checks meaningless, so it is reported alone.
    arrays, damage = read_checked(entry, shard_name, tuple(ROW_ARRAYS))
    if arrays is None:
        assert damage is not None
        return [Problem(f"{shard_name} rows {start}-{stop - 1}", damage.reason)]
    problems = [
        Problem(
            shard_name, f"commit record says {field}={record.get(field)!r}, manifest says {want!r}"
        )
        for field, want in (
            ("sha256", info["sha256"]),
            ("row_start", start),
            ("row_stop", stop),
            ("count", info["count"]),
            ("cache_key", entry.key),
        )
        if record.get(field) != want
    ]
    maps = {name: arrays[name] for name in MAP_ARRAYS}  # [n, G, G] each
    valid = arrays["valid"]  # [n]
    reason = [str(r) for r in arrays["reason"]]
    keys = [str(k) for k in arrays["key"]]
    fg = arrays["fg_correct"]  # [n]

    for row in range(stop - start):
        where = f"{shard_name} row {row} (global {start + row}, key {keys[row]!r})"
        if not keys[row]:
            problems.append(Problem(where, "empty key: the row was never written"))
        row_maps = {name: array[row] for name, array in maps.items()}
        for message in row_problems(
            row_maps, valid[row], reason[row], fg[row], NORMALIZED_ATOL_STORED
        ):
            problems.append(Problem(where, message))
    if len(set(keys)) != len(keys):
        problems.append(Problem(shard_name, "duplicate keys within the shard"))

    counted = row_counts(valid, reason, fg)
    for field, found in counted.items():
        if record.get(field) != found:
            problems.append(
                Problem(
                    shard_name, f"commit record says {field}={record.get(field)}, rows give {found}"
                )
            )
    return problems
