"""Which map-cache entry an extraction's parameters name: its location, and opening it.

Prefect-free on purpose: `python -m flows.extract` answers a fully committed rerun from here
without importing Prefect or the flow (flows.extract_flow), and the flow's tasks open their
entry through the same functions. The key itself is the teacher's business (teacher.entry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.extract_params import ExtractParams
from pipeline.cache import CacheEntry, CacheSpec, cache_key
from pipeline.shards.records import ShardIndex, read_index
from teacher.entry import entry_spec as teacher_entry_spec

if TYPE_CHECKING:
    from teacher import BaselineTeacher, TeacherSpec


def entry_spec(
    params: ExtractParams,
) -> tuple[CacheSpec, ShardIndex, TeacherSpec | BaselineTeacher]:
    """What these params' maps are: the cache spec, the shard index and the weightless
    teacher (the checkpoint's files, no weights, no torch)."""
    index = read_index(params.shard_dir())
    spec, teacher = teacher_entry_spec(index, params.teacher_config())
    return spec, index, teacher


def entry_location(params: ExtractParams) -> str:
    """Where these params' entry is (or would be): `<cache_root>/<cache_key>`."""
    return f"{params.cache_root.rstrip('/')}/{cache_key(entry_spec(params)[0])}"


def create_or_open_entry(params: ExtractParams) -> CacheEntry:
    """The cache entry for these params, created when absent."""
    spec, index, teacher = entry_spec(params)
    return CacheEntry.create_or_open(
        params.cache_root, spec, index, grid=teacher.grid, geometry=teacher.geometry_spec()
    )
