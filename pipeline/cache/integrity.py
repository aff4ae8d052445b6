"""What is checked when a committed shard's maps are read (docs/integrity.md).

Three kinds of damage, each found on read and reported as one `ShardDamage`:
- a chunk that does not decode: its crc32c (entries with checksums) or its zstd frame fails;
- a chunk that is missing: zarr would silently return the fill value (empty keys, zero maps);
- rows that decode but break the row contract the student relies on: a valid C_VLM that is not
  finite, negative or not normalized, or keys that are not the shard's.

Training checks every committed shard of its entries before it starts (flows/train.py) and the
loader checks each shard again as it reads it (student/loader.py), so damage stops a run with
one line naming the entry, shard, rows and the repair, instead of a NaN loss or silent wrong maps.
`cache verify --repair` marks damaged shards pending, so the next extraction redoes only them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.cache.entry import CacheEntry
from pipeline.cache.rows import NORMALIZED_ATOL_STORED
from pipeline.cache.spec import teacher_brief
from pipeline.errors import DamagedDataError
from pipeline.shards.records import ShardIndex

# What the student reads of each shard; also what the pre-training check reads.
STUDENT_FIELDS = ("key", "c_vlm", "valid")


class DamagedCacheError(DamagedDataError):
    """Committed maps that fail their checks on read (see the module docstring)."""


@dataclass(frozen=True)
class ShardDamage:
    """Damage found in one shard's stored rows."""

    shard: str
    rows: tuple[int, int]  # the shard's global [start, stop)
    bad_rows: tuple[int, ...]  # rows within the shard; every row when a chunk is unreadable
    reason: str

    def describe(self) -> str:
        start, stop = self.rows
        if len(self.bad_rows) == stop - start:
            which = f"rows {start}-{stop - 1} (all {stop - start})"
        else:
            first = start + self.bad_rows[0]
            which = f"{len(self.bad_rows)} bad row(s) of rows {start}-{stop - 1}, first row {first}"
        return f"shard {self.shard} {which}: {self.reason}"


def repair_command(entry: CacheEntry) -> str:
    spec = entry.manifest["spec"]
    return (
        f"python -m pipeline cache verify {entry.path} --repair, then rerun the extraction "
        f"that made it (make extract DATASET={spec['dataset']} SPLIT={spec['split']} "
        f"SHARD_SIZE={entry.manifest['shard_size']} with its teacher: {teacher_brief(spec)})"
    )


def damage_message(entry: CacheEntry, damage: Sequence[ShardDamage]) -> str:
    """One line: the entry, the first damaged shard and its rows, how many more, the repair."""
    more = f" (and {len(damage) - 1} more damaged shard(s))" if len(damage) > 1 else ""
    return (
        f"map cache {entry.path}: {damage[0].describe()}{more}; "
        f"repair: {repair_command(entry)}; or train with --skip-bad-rows to leave bad rows out"
    )


def read_checked(
    entry: CacheEntry, shard_name: str, fields: Sequence[str] = STUDENT_FIELDS
) -> tuple[dict[str, np.ndarray] | None, ShardDamage | None]:
    """The committed shard's arrays named in `fields`, or the damage that stops them being read.
    ShardNotCommittedError for a pending shard."""
    entry.commit_record(shard_name)  # ShardNotCommittedError first: a pending shard is no damage
    start, stop = entry.shard_rows(shard_name)
    every_row = tuple(range(stop - start))
    # Entries with checksums store every chunk (write_empty_chunks); older ones skipped chunks
    # equal to the fill value (all reasons ""), so there only a missing key chunk is damage.
    legacy = set(unchecksummed_arrays(entry, fields))
    missing = [
        name
        for name in fields
        if (name == "key" or name not in legacy) and not entry.chunk_stored(name, shard_name)
    ]
    if missing:
        reason = f"chunk of {', '.join(missing)} is missing (committed, but the file is gone)"
        return None, ShardDamage(shard_name, (start, stop), every_row, reason)
    try:
        arrays = entry.read_shard(shard_name, fields=fields)
    except Exception as err:  # whatever the codec raises on bytes that do not decode
        reason = f"chunk does not decode ({type(err).__name__}: {str(err)[:160]})"
        return None, ShardDamage(shard_name, (start, stop), every_row, reason)
    return arrays, None


def bad_rows(
    arrays: dict[str, np.ndarray], expected_keys: Sequence[str] | None = None
) -> tuple[np.ndarray, str]:
    """Rows (bool [n]) whose stored maps the student must not use, and why (the first kind).

    Vectorized over the shard: a valid row's C_VLM must be finite, non-negative and sum to 1
    within float16 rounding; a row's key must be set and, when known, be the index's key."""
    c_vlm = np.asarray(arrays["c_vlm"], dtype=np.float64)  # [n, G, G]
    valid = np.asarray(arrays["valid"], dtype=bool)  # [n]
    keys = [str(k) for k in arrays["key"]]
    finite = np.isfinite(c_vlm).all(axis=(1, 2))  # [n]
    total = np.where(finite[:, None, None], c_vlm, 0.0).sum(axis=(1, 2))  # [n]
    negative = (np.where(finite[:, None, None], c_vlm, 0.0) < 0).any(axis=(1, 2))  # [n]
    not_finite = valid & ~finite
    not_normalized = valid & finite & ((np.abs(total - 1.0) > NORMALIZED_ATOL_STORED) | negative)
    no_key = np.array([not k for k in keys], dtype=bool)
    wrong_key = np.zeros(len(keys), dtype=bool)
    if expected_keys is not None:
        wrong_key = np.array(
            [k != e for k, e in zip(keys, expected_keys, strict=False)]
            + [True] * max(0, len(keys) - len(expected_keys)),
            dtype=bool,
        )
        wrong_key &= ~no_key
    first = int(np.flatnonzero(not_normalized)[0]) if not_normalized.any() else 0
    reasons = [
        (not_finite, "valid c_vlm is not finite"),
        (
            not_normalized,
            "valid c_vlm is not a normalized non-negative map "
            f"(row {first} of the shard sums to {total[first]:.4g})",
        ),
        (no_key, "empty key: the row was never written"),
        (wrong_key, "key is not the index's key for this row"),
    ]
    bad = not_finite | not_normalized | no_key | wrong_key
    return bad, next((text for mask, text in reasons if mask.any()), "")


def check_shard(
    entry: CacheEntry, shard_name: str, expected_keys: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray] | None, ShardDamage | None]:
    """`read_checked` plus the row checks: (arrays, None) for a sound shard; (arrays, damage)
    when only some rows are bad; (None, damage) when the shard's chunks cannot be read."""
    arrays, damage = read_checked(entry, shard_name)
    if arrays is None:
        return None, damage
    bad, reason = bad_rows(arrays, expected_keys)
    if not bad.any():
        return arrays, None
    rows = tuple(int(i) for i in np.flatnonzero(bad))
    return arrays, ShardDamage(shard_name, entry.shard_rows(shard_name), rows, reason)


def scan_entry(
    entry: CacheEntry, keys_by_shard: dict[str, list[str]] | None = None
) -> list[ShardDamage]:
    """Every committed shard checked as the student reads it; the damaged ones, in index order."""
    damaged = []
    committed = entry.committed_shards()
    for name in entry.shard_names:
        if name not in committed:
            continue
        expected = keys_by_shard.get(name) if keys_by_shard else None
        _, damage = check_shard(entry, name, expected)
        if damage is not None:
            damaged.append(damage)
    return damaged


def require_sound_entry(
    entry: CacheEntry, index: ShardIndex, skip_bad_rows: bool = False
) -> list[ShardDamage]:
    """Check every committed shard of `entry` (built from `index`) as the student will read it.
    DamagedCacheError (one line) on damage, unless `skip_bad_rows`: then the damage is returned
    for the caller to report, and the loader leaves those rows out of the alignment."""
    entry.check_matches(index)
    damage = scan_entry(entry, {s.name: s.keys for s in index.shards})
    if damage and not skip_bad_rows:
        raise DamagedCacheError(damage_message(entry, damage))
    return damage


def unchecksummed_arrays(entry: CacheEntry, among: Sequence[str] | None = None) -> list[str]:
    """Arrays (of `among`, default all) whose chunks carry no checksum (entries made before
    checksums): a crc32c codec, or zstd with its content checksum, makes damage fail the read."""
    names = []
    for name in among if among is not None else entry.manifest["arrays"]:
        codecs = entry.array_codecs(name)
        checked = any(
            c["name"] == "crc32c"
            or (c["name"] == "zstd" and c.get("configuration", {}).get("checksum"))
            for c in codecs
        )
        if not checked:
            names.append(name)
    return names
