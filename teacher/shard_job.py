"""One shard -> one ShardMaps (the unit of teacher work, DESIGN 3.2): what flows call per task."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline.cache import ShardMaps
from pipeline.shard_reader import ShardSample, iter_shard
from teacher.extract import MapResult, Teacher, TeacherInput


def teacher_input(sample: ShardSample, shard_path: Path) -> TeacherInput:
    try:
        image = Image.open(io.BytesIO(sample.image_bytes))
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(
            f"{shard_path}: sample {sample.key!r} has an unreadable {sample.image_ext} image: {err}"
        ) from err
    record = sample.record
    return TeacherInput(
        key=sample.key,
        image=image.convert("RGB"),
        boxes=[tuple(box) for box in record.boxes],
        class_name=record.class_name,
        label=record.label,
    )


def write_audit(results: list[MapResult], path: Path) -> None:
    """One JSON line per row: key, answer, and the audit record (token ids and positions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in results:
            fh.write(json.dumps({"key": r.key, "answer": r.answer, **(r.audit or {})}) + "\n")


def extract_shard_maps(
    teacher: Teacher, shard_path: str | Path, audit_dir: str | Path | None = None
) -> ShardMaps:
    """Maps of every sample of one shard, in the shard's order.

    With the teacher's audit option on and `audit_dir` given, also writes
    `<audit_dir>/<shard name>.audit.jsonl` so anyone can recompute each map.
    """
    shard_path = Path(shard_path)
    items = [teacher_input(sample, shard_path) for sample in iter_shard(shard_path)]
    if not items:
        raise ValueError(f"{shard_path}: shard holds no samples")
    results = teacher.extract(items)
    if teacher.cfg.audit and audit_dir is not None:
        write_audit(results, Path(audit_dir) / f"{shard_path.name}.audit.jsonl")
    return ShardMaps.from_results(results)
