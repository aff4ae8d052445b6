"""The entry's manifest (docs/design.md): its layout on disk, how it is made from a spec and a shard
index, and the checks that make an entry refuse a request or a hand-edited manifest.

See `pipeline/cache/__init__.py` for the format. `pipeline.cache.entry` is the only writer.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import zarr
import zarr.errors
from zarr.codecs import Crc32cCodec, ZstdCodec

from pipeline.cache.rows import MAP_ARRAYS, ROW_ARRAYS, ROW_DTYPES
from pipeline.cache.spec import (
    CACHE_FORMAT_VERSION,
    CacheMismatchError,
    CacheSpec,
    cache_key,
    full_cache_hash,
)
from pipeline.io import canonical_json
from pipeline.shards.records import ShardIndex

MANIFEST_FILE = "manifest.json"
MAPS_GROUP = "maps.zarr"
COMMITS_DIR = "commits"
CLAIMS_DIR = "claims"
# What a side file (`CacheEntry.put_file`: previews/, audit/) may never overwrite.
RESERVED_NAMES = (MANIFEST_FILE, MAPS_GROUP, COMMITS_DIR, CLAIMS_DIR)


def library_versions() -> dict[str, str]:
    """Versions that can change stored bytes or maps; read from metadata, importing nothing."""
    versions = {}
    for dist in (
        "zarr",
        "numcodecs",
        "numpy",
        "fsspec",
        "s3fs",
        "torch",
        "transformers",
        "bitsandbytes",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """Caller-given geometry may be a dict, a dataclass or a pydantic model; store plain JSON."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(canonical_json(value))


def spec_differences(left: Any, right: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ, for error messages a person can act on."""
    if isinstance(left, dict) and isinstance(right, dict):
        out = []
        for name in sorted(set(left) | set(right)):
            path = f"{prefix}.{name}" if prefix else name
            if name not in left or name not in right:
                out.append(path)
            else:
                out += spec_differences(left[name], right[name], path)
        return out
    return [] if left == right else [prefix or "<value>"]


def new_manifest(
    spec: CacheSpec, index: ShardIndex, grid: int, geometry: Any, writer_id: str
) -> dict[str, Any]:
    if grid <= 0:
        raise ValueError(f"grid must be positive, got {grid}")
    num_rows = index.num_samples
    # Chunk = shard: one chunk per shard is what makes a shard one writer's atomic unit.
    chunk_rows = max(1, index.shard_size)
    for position, shard in enumerate(index.shards[:-1]):
        if shard.count != index.shard_size:
            raise ValueError(
                f"index {index.dataset}/{index.split}: shard {shard.name} (#{position}) has "
                f"{shard.count} samples; all but the last must have shard_size={index.shard_size} "
                "for shards to be chunks"
            )
    arrays = {}
    for name, (data_type, _) in ROW_ARRAYS.items():
        per_row = [grid, grid] if name in MAP_ARRAYS else []
        arrays[name] = {
            "data_type": data_type,
            "shape": [num_rows, *per_row],
            "chunks": [chunk_rows, *per_row],
        }
    offsets = index.shard_offsets()
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "cache_key": cache_key(spec),
        "cache_hash": full_cache_hash(spec),
        "spec": spec.model_dump(mode="json"),
        "grid": grid,
        "geometry": geometry,
        "shard_size": index.shard_size,
        "num_rows": num_rows,
        "shards": [
            {"name": s.name, "count": s.count, "sha256": s.sha256, "row_offset": offset}
            for s, offset in zip(index.shards, offsets, strict=True)
        ],
        "arrays": arrays,
        "shard_state": (
            f"derived, never stored here: a shard is committed iff {COMMITS_DIR}/<shard>.json "
            "exists; otherwise pending and its rows must not be read"
        ),
        "library_versions": library_versions(),
        "created": utc_now(),
        "created_by": writer_id,
    }


# What must agree between a found manifest and a request; the rest (time, versions) is history.
_IDENTITY_FIELDS = (
    "format_version",
    "cache_key",
    "cache_hash",
    "spec",
    "grid",
    "geometry",
    "shard_size",
    "num_rows",
    "shards",
    "arrays",
)


def require_same_identity(url: str, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    differing = [f for f in _IDENTITY_FIELDS if found.get(f) != wanted.get(f)]
    if differing:
        details = spec_differences(
            {f: found.get(f) for f in differing}, {f: wanted.get(f) for f in differing}
        )
        raise CacheMismatchError(
            f"{url}/{MANIFEST_FILE} does not match the requested entry (differs in: "
            f"{', '.join(details[:8])}); refusing to reuse it. Use another cache root or "
            "remove this entry"
        )


def chunk_compressors() -> tuple[ZstdCodec, Crc32cCodec]:
    """Every chunk of a new entry: zarr's default zstd, then a crc32c of the compressed bytes, so
    any damage to a stored chunk fails its read instead of decoding into wrong maps. Codecs are
    not part of the manifest's identity nor of the cache key: entries written before checksums
    open as before (`cache verify` calls them unchecksummed)."""
    return ZstdCodec(level=0, checksum=False), Crc32cCodec()


def create_arrays(store: Any, manifest: dict[str, Any]) -> None:
    """Create the group and arrays; a racing creator writes identical metadata, so ignore it."""
    try:
        group = zarr.open_group(store, mode="a", zarr_format=3)
    except zarr.errors.ContainsGroupError:  # another creator won the race between check and set
        group = zarr.open_group(store, mode="r+", zarr_format=3)
    for name, (data_type, fill) in ROW_ARRAYS.items():
        if name in group:
            continue  # validated against the manifest after opening
        layout = manifest["arrays"][name]
        try:
            group.create_array(
                name,
                shape=tuple(layout["shape"]),
                chunks=tuple(layout["chunks"]),
                dtype=ROW_DTYPES[data_type],
                fill_value=fill,
                compressors=chunk_compressors(),
                overwrite=False,
            )
        except zarr.errors.ContainsArrayError:
            continue


def check_self_consistent(url: str, manifest: dict[str, Any]) -> None:
    """A manifest whose stored spec does not hash to its own key was edited or is foreign."""
    required = ("format_version", "cache_key", "cache_hash", "spec", "grid", "shards", "arrays")
    missing = [f for f in required if f not in manifest]
    if missing:
        raise CacheMismatchError(f"{url}/{MANIFEST_FILE}: missing fields {missing}")
    if manifest["format_version"] != CACHE_FORMAT_VERSION:
        raise CacheMismatchError(
            f"{url}/{MANIFEST_FILE}: format version {manifest['format_version']}, this code reads "
            f"{CACHE_FORMAT_VERSION}"
        )
    try:
        spec = CacheSpec.model_validate(manifest["spec"])
    except ValueError as err:
        raise CacheMismatchError(f"{url}/{MANIFEST_FILE}: unreadable spec ({err})") from err
    if full_cache_hash(spec) != manifest["cache_hash"] or cache_key(spec) != manifest["cache_key"]:
        raise CacheMismatchError(
            f"{url}/{MANIFEST_FILE}: the spec no longer hashes to the entry's key "
            f"{manifest['cache_key']} (edited by hand?); refusing to use it"
        )
    directory = url.rsplit("/", 1)[-1]
    if directory != manifest["cache_key"]:
        raise CacheMismatchError(
            f"{url}: directory name {directory!r} is not the entry's key {manifest['cache_key']!r}"
        )
