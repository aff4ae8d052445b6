"""Shard files checked against their `index.json` before a run reads them (issue 22).

index.json records each shard's sha256 when the shard is written. A shard that is missing,
truncated, altered or swapped for another split's fails this check, and the run stops with one
line naming the file and the command that rewrites it from the raw files, instead of a
`tarfile.ReadError` traceback mid-epoch or, worse, training on the wrong images.

The full sha256 is the check (index.json records no size: adding one would change the dataset
fingerprint and so every cache key). Its cost is measured by `python -m bench.integrity`; the
flows run it once per file per run, in the process the user started, before any loader worker
or DDP rank exists, on a few threads (hashlib releases the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.errors import DamagedDataError
from pipeline.io import file_sha256
from pipeline.shards.records import INDEX_FILE, ShardIndex, ShardInfo


class DamagedShardError(DamagedDataError):
    """A shard file that does not match its index.json."""


def shard_file_problem(path: Path, info: ShardInfo) -> str | None:
    """Why the shard file at `path` is not the one index.json describes (None: it is)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "the file is missing"
    found = file_sha256(path)
    if found != info.sha256:
        return (
            f"sha256 {found[:16]}... of its {size} bytes is not index.json's "
            f"{info.sha256[:16]}... (truncated, altered or replaced)"
        )
    return None


def damaged_shards(
    split_dir: Path, index: ShardIndex, names: Iterable[str] | None = None, threads: int = 0
) -> list[tuple[ShardInfo, str]]:
    """(shard, problem) for each shard file of `index` (or only `names`) that fails the check."""
    wanted = set(names) if names is not None else None
    shards = [s for s in index.shards if wanted is None or s.name in wanted]
    workers = threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = pool.map(lambda s: shard_file_problem(split_dir / s.name, s), shards)
        return [(s, p) for s, p in zip(shards, problems, strict=True) if p is not None]


def repair_shards_command(split_dir: Path, index: ShardIndex) -> str:
    return (
        f"make shards DATASET={index.dataset} SPLIT={index.split} "
        f"SHARDS={split_dir.parent.parent} SHARD_SIZE={index.shard_size} "
        "(rewrites the split from its raw files; add ROOT=<raw folder> if it is elsewhere)"
    )


def check_shard_files(
    split_dir: Path, index: ShardIndex, names: Iterable[str] | None = None
) -> None:
    """DamagedShardError (one line: file, rows, problem, repair) unless every shard matches."""
    found = damaged_shards(split_dir, index, names)
    if not found:
        return
    info, problem = found[0]
    offset = index.shard_offsets()[index.shards.index(info)]
    more = f" (and {len(found) - 1} more damaged shard(s))" if len(found) > 1 else ""
    raise DamagedShardError(
        f"shard {split_dir / info.name} (rows {offset}-{offset + info.count - 1}) does not match "
        f"{split_dir / INDEX_FILE}: {problem}{more}; repair: "
        f"{repair_shards_command(split_dir, index)}"
    )
