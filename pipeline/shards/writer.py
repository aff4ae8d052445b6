"""Writing a dataset split as fixed-size WebDataset shards plus `index.json` (docs/design.md).

Every file appears atomically (written under a temporary name, then renamed), and `index.json`
is written last, so a reader never sees a half-written shard and an interrupted run is simply
redone. A rerun whose raw files are unchanged finds the index up to date and writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from pipeline.datasets.adapters import AdapterResult, RawSample
from pipeline.errors import BadParametersError
from pipeline.io import TMP_SUFFIX, atomic_path, atomic_write_text, file_sha256
from pipeline.shards.checks import BadSample, CheckedImage, check_image
from pipeline.shards.config import DEFAULT_SHARD_SIZE
from pipeline.shards.integrity import damaged_shards
from pipeline.shards.masks import check_dense_targets
from pipeline.shards.records import (
    INDEX_FILE,
    SampleRecord,
    ShardIndex,
    ShardInfo,
    SkippedSample,
    read_index,
)

WRITER_VERSION = 2  # 2: instance masks in the records
SHARD_PATTERN = "shard-{:06d}.tar"
LOCK_FILE = ".write.lock"


@dataclass
class ShardsOutcome:
    index: ShardIndex
    out_dir: Path
    up_to_date: bool  # True: nothing was written, the existing shards match the raw files
    # Shard files found damaged (not matching index.json) and therefore rewritten: "name: why"
    damaged: list[str] = dataclasses.field(default_factory=list)


def source_fingerprint(result: AdapterResult, shard_size: int) -> str:
    """Hash of what the shards are built from: raw files' names, sizes, mtimes and annotations."""
    digest = hashlib.sha256(f"writer={WRITER_VERSION};shard_size={shard_size}".encode())
    for path in result.annotation_files:
        stat = path.stat()
        digest.update(f"A|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for sample in result.samples:
        try:
            stat = sample.path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(f"S|{sample.key}|{sample.path}|{size}|{mtime}|{sample.label}".encode())
    for skip in result.skipped:
        digest.update(f"K|{skip.source}|{skip.reason}".encode())
    return digest.hexdigest()


def _is_current(out_dir: Path, fingerprint: str, damaged: list[str]) -> ShardIndex | None:
    """The index when the shards are up to date with the raw files and every shard file still
    matches its sha256 in index.json; damaged files are listed in `damaged` (then None)."""
    try:
        index = read_index(out_dir)
    except (FileNotFoundError, ValueError):
        return None
    if index.source_fingerprint != fingerprint:
        return None
    damaged += [f"{info.name}: {why}" for info, why in damaged_shards(out_dir, index)]
    return None if damaged else index


class _ShardSink:
    """Collects checked samples and writes them `shard_size` at a time."""

    def __init__(self, out_dir: Path, shard_size: int) -> None:
        self.out_dir, self.shard_size = out_dir, shard_size
        self.pending: list[dict] = []
        self.shards: list[ShardInfo] = []

    def add(self, sample: dict) -> None:
        self.pending.append(sample)
        if len(self.pending) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # Imported here: webdataset imports torch (seconds), which up-to-date shards never need.
        import webdataset as wds

        name = SHARD_PATTERN.format(len(self.shards))
        final = self.out_dir / name
        # mtime fixed so the same samples always give the same bytes (and the same fingerprint).
        with atomic_path(final) as tmp, wds.TarWriter(str(tmp), mtime=0.0, encoder=False) as tar:
            for sample in self.pending:
                tar.write(sample)
        keys = [s["__key__"] for s in self.pending]
        self.shards.append(
            ShardInfo(name=name, count=len(keys), sha256=file_sha256(final), keys=keys)
        )
        self.pending = []


def _checked(
    samples: list[RawSample], threads: int
) -> Iterator[tuple[RawSample, CheckedImage | BadSample]]:
    def check(sample: RawSample) -> CheckedImage | BadSample:
        try:
            return check_image(sample.path)
        except BadSample as bad:
            return bad

    # Decoding releases the GIL, so a few threads keep the disk and the CPU busy together.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from zip(samples, pool.map(check, samples), strict=True)


def write_shards(
    result: AdapterResult,
    out_dir: Path,
    dataset: str,
    split: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    root: Path | None = None,
    threads: int = 4,
    progress: bool = True,
) -> ShardsOutcome:
    """Write `result` as shards under `out_dir`; a no-op when they are already current."""
    if shard_size < 1:
        raise BadParametersError(f"shard_size must be >= 1, got {shard_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = source_fingerprint(result, shard_size)
    # Two runs that find the shards missing at once (say, two extractions) take turns: the
    # second waits, then finds the first's shards current instead of rewriting them under it.
    with FileLock(out_dir / LOCK_FILE):
        damaged: list[str] = []
        current = _is_current(out_dir, fingerprint, damaged)
        if current is not None:
            return ShardsOutcome(current, out_dir, up_to_date=True)
        # Deterministic bytes (fixed mtime, same order): a rewrite of damaged shards gives back
        # the files index.json described, so caches built on them stay valid.
        index = _write_all(
            result, out_dir, dataset, split, shard_size, fingerprint, root, threads, progress
        )
    return ShardsOutcome(index, out_dir, up_to_date=False, damaged=damaged)


def _write_all(
    result: AdapterResult,
    out_dir: Path,
    dataset: str,
    split: str,
    shard_size: int,
    fingerprint: str,
    root: Path | None,
    threads: int,
    progress: bool,
) -> ShardIndex:
    # Drop the old index first: from here until the new one lands, readers see "no shards".
    (out_dir / INDEX_FILE).unlink(missing_ok=True)
    for stale in [*out_dir.glob(f"*{TMP_SUFFIX}"), *out_dir.glob("shard-*.tar")]:
        stale.unlink()

    sink = _ShardSink(out_dir, shard_size)
    skipped = list(result.skipped)
    repaired: list[SkippedSample] = []
    seen_keys: set[str] = set()
    bar = tqdm(
        total=len(result.samples),
        desc=f"shards {dataset}/{split}",
        unit="img",
        disable=not progress,
    )
    for sample, checked in _checked(result.samples, threads):
        bar.update()
        source = str(sample.path.relative_to(root)) if root else str(sample.path)
        if isinstance(checked, BadSample):
            skipped.append(SkippedSample(source=source, reason=str(checked)))
            continue
        key = sample.key
        if key in seen_keys:  # two raw names that sanitize alike: keep both, disambiguated
            key = f"{key}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"
        seen_keys.add(key)
        boxes, box_labels, masks, box_repairs = check_dense_targets(
            sample.boxes, sample.box_labels, sample.masks, checked.width, checked.height
        )
        repairs = [*sample.notes, *checked.repairs, *box_repairs]
        if repairs:
            repaired.append(SkippedSample(source=source, reason="; ".join(repairs)))
        record = SampleRecord(
            label=sample.label,
            class_name=result.classes[sample.label],
            boxes=boxes,
            box_labels=box_labels,
            masks=masks,
            width=checked.width,
            height=checked.height,
            source=source,
            domain=sample.domain,
            repairs=repairs,
        )
        sink.add(
            {"__key__": key, checked.ext: checked.data, "json": record.model_dump_json().encode()}
        )
    sink.flush()
    bar.close()

    index = ShardIndex(
        dataset=dataset,
        split=split,
        shard_size=shard_size,
        classes=result.classes,
        class_ids=result.class_ids,
        shards=sink.shards,
        skipped=skipped,
        repaired=repaired,
        source_fingerprint=fingerprint,
    )
    index.fingerprint = index.compute_fingerprint()
    atomic_write_text(out_dir / INDEX_FILE, json.dumps(index.model_dump(), indent=1))
    return index
