"""Which map-cache entry a teacher's maps of a shard split go to: one function, below the flows.

The extract flow, the rerun check of `python -m flows.extract`, the benchmarks and the
experiments all ask this; none of them needs Prefect to know an entry's key. Described teachers
are kept per process, keyed by the frozen config itself (reading a checkpoint's JSON files and
tokenizer costs milliseconds, hashing a local checkpoint's weights once costs more).
"""

from __future__ import annotations

from functools import lru_cache

from pipeline.cache import CacheSpec, cache_key
from pipeline.shards.records import ShardIndex
from teacher import BaselineTeacher, TeacherConfig, TeacherSpec, describe_teacher


@lru_cache(maxsize=8)
def described(cfg: TeacherConfig, vocabulary: tuple[str, ...]) -> TeacherSpec | BaselineTeacher:
    """describe_teacher, once per (config, class vocabulary) in this process."""
    return describe_teacher(cfg, list(vocabulary))


def entry_spec(
    index: ShardIndex, cfg: TeacherConfig
) -> tuple[CacheSpec, TeacherSpec | BaselineTeacher]:
    """The cache spec of `cfg`'s maps of the split `index` describes, and the weightless
    teacher it came from (its grid and geometry create the entry)."""
    teacher = described(cfg, tuple(index.classes))
    spec = CacheSpec(
        dataset=index.dataset,
        split=index.split,
        dataset_fingerprint=index.fingerprint,
        teacher=teacher.spec(),
    )
    return spec, teacher


def entry_key(index: ShardIndex, cfg: TeacherConfig) -> str:
    """The entry's directory name under a cache root."""
    return cache_key(entry_spec(index, cfg)[0])
