"""One shard -> one ShardMaps (the unit of teacher work, docs/design.md): what a flow task calls."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.cache import CacheEntry, ShardMaps
from pipeline.shards.reader import ShardSample, iter_shard
from teacher.model import Teacher
from teacher.results import MapResult, TeacherInput


class UnreadableImage(ValueError):
    """A shard sample whose bytes do not decode; it becomes an invalid row, not a failed shard."""


def teacher_input(sample: ShardSample, shard_path: Path, vocabulary: list[str]) -> TeacherInput:
    try:
        image = Image.open(io.BytesIO(sample.image_bytes))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(
            f"corrupt image ({sample.image_ext} in {shard_path.name}): {err}"
        ) from err
    record = sample.record
    # Dense prompt (Eq. 12): one object word per target class present, in first-seen order.
    present = list(dict.fromkeys(record.box_labels))
    return TeacherInput(
        key=sample.key,
        image=image.convert("RGB"),
        boxes=[tuple(box) for box in record.boxes],
        class_name=record.class_name,
        label=record.label,
        object_names=[vocabulary[i] for i in present] if present else None,
        masks=list(record.masks) or None,
    )


def unreadable_result(teacher: Teacher, sample: ShardSample, reason: str) -> MapResult:
    zeros = np.zeros((teacher.grid, teacher.grid), dtype=np.float32)
    return MapResult(
        key=sample.key, c_vlm=zeros, c_fore=zeros, c_back=zeros, valid=False, reason=reason,
        answer="", fg_correct=-1, audit=None,
    )  # fmt: skip


def audit_lines(results: list[MapResult]) -> bytes:
    """One JSON line per row: key, answer, and the audit record (token ids and positions)."""
    lines = [json.dumps({"key": r.key, "answer": r.answer, **(r.audit or {})}) for r in results]
    return "".join(line + "\n" for line in lines).encode()


def extract_shard_maps(
    teacher: Teacher,
    shard_path: str | Path,
    entry: CacheEntry | None = None,
    on_images: Callable[[int], None] | None = None,
) -> ShardMaps:
    """Maps of every sample of one shard, in the shard's order.

    With the teacher's audit option on and `entry` given, also writes
    `audit/<shard name>.audit.jsonl` into the entry so anyone can recompute each map.
    `on_images(n)` hears of every n images done (a progress bar), batch by batch.
    """
    shard_path = Path(shard_path)
    samples = list(iter_shard(shard_path))
    if not samples:
        raise ValueError(f"{shard_path}: shard holds no samples")
    items, unreadable = [], {}
    for sample in samples:
        try:
            items.append(teacher_input(sample, shard_path, teacher.vocabulary))
        except UnreadableImage as err:
            unreadable[sample.key] = unreadable_result(teacher, sample, str(err))
    if unreadable and on_images is not None:
        on_images(len(unreadable))
    extracted = {r.key: r for r in teacher.extract(items, on_images)} if items else {}
    results = [extracted.get(s.key) or unreadable[s.key] for s in samples]  # the shard's order
    if teacher.cfg.audit and entry is not None:
        entry.put_file(f"audit/{shard_path.name}.audit.jsonl", audit_lines(results))
    return ShardMaps.from_results(results)
