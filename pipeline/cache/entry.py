"""The map-cache entry (docs/design.md): Zarr v3 arrays row-aligned with the shards, shard commits.

See `pipeline/cache/__init__.py` for the on-disk format. This module is the only code that writes it.

Why it is safe under concurrency:
- the arrays' metadata is deterministic, so racing creators write identical `zarr.json` bytes;
- the manifest is created with an atomic create-if-absent, and whoever loses validates the
  winner's manifest against its own request (CacheMismatchError if they differ);
- each shard is exactly one chunk of every array, written with one slice assignment per array,
  so a shard's rows are never mixed with another shard's; each chunk is one atomic object
  (rename locally, one PUT on S3);
- a shard counts as done only once its commit record exists, written after the data; readers
  refuse anything else, and a writer that dies mid-shard leaves the shard pending for the rerun;
- writers claim a shard (create-if-absent of a claim file with a lease) before computing it, so
  two extractors split the work instead of doubling it. If a lease expires while its holder is
  still alive, both write whole chunks of the same deterministic maps: wasted work, not damage.
  (A teacher that is not bitwise deterministic could then leave c_vlm from one writer and
  c_fore from the other: each row still valid, but `cache verify` may flag the commit counts.
  Leases default to 2 h and a same-host claim dies with its process, so this needs a writer
  that outlives its lease.)
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import zarr
import zarr.errors
from zarr.storage import FsspecStore, LocalStore

from pipeline.cache.claims import DEFAULT_LEASE_S, ShardClaims, default_writer_id
from pipeline.cache.files import EntryFiles
from pipeline.cache.manifest import (
    COMMITS_DIR,
    MANIFEST_FILE,
    MAPS_GROUP,
    RESERVED_NAMES,
    create_arrays,
    jsonable,
    new_manifest,
    require_same_identity,
    utc_now,
)
from pipeline.cache.rows import MAP_ARRAYS, ROW_ARRAYS, ShardMaps, row_counts
from pipeline.cache.spec import (
    CacheMismatchError,
    CacheSpec,
    cache_key,
)
from pipeline.io import pretty_json
from pipeline.shards.records import ShardIndex


class ShardNotCommittedError(LookupError):
    """A reader asked for rows whose shard has no commit record (missing or half written)."""


def _zarr_store(
    url: str, storage_options: dict[str, Any] | None, read_only: bool
) -> LocalStore | FsspecStore:
    """Zarr's own store for `url`: LocalStore (atomic renames) locally, FsspecStore elsewhere."""
    files = EntryFiles(url, storage_options)
    if files.is_local:
        return LocalStore(files.root, read_only=read_only)
    return FsspecStore.from_url(url, storage_options=storage_options or {}, read_only=read_only)


class CacheEntry:
    """One content-addressed entry: `<root>/<cache_key>/` (docs/design.md)."""

    def __init__(
        self,
        url: str,
        manifest: dict[str, Any],
        storage_options: dict[str, Any] | None = None,
        index: ShardIndex | None = None,
        writer_id: str | None = None,
    ) -> None:
        self.path = url.rstrip("/")
        self.manifest = manifest
        self.storage_options = storage_options
        self.writer_id = writer_id or default_writer_id()
        self._files = EntryFiles(self.path, storage_options)
        self._claims = ShardClaims(self._files, self.writer_id)
        self._index = index  # known to writers; lets write_shard check row alignment by key
        self._shards = {s["name"]: s for s in manifest["shards"]}
        self._groups: dict[bool, zarr.Group] = {}
        self._arrays: dict[str, zarr.Array] = {}

    # ---- identity -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.manifest["cache_key"]

    @property
    def spec(self) -> CacheSpec:
        return CacheSpec.model_validate(self.manifest["spec"])

    @property
    def grid(self) -> int:
        return int(self.manifest["grid"])

    @property
    def shard_names(self) -> list[str]:
        return [s["name"] for s in self.manifest["shards"]]

    def shard_rows(self, shard_name: str) -> tuple[int, int]:
        """[start, stop) rows of a shard in every array."""
        info = self._shard_info(shard_name)
        return info["row_offset"], info["row_offset"] + info["count"]

    def _shard_info(self, shard_name: str) -> dict[str, Any]:
        if shard_name not in self._shards:
            raise KeyError(f"{self.path}: no shard named {shard_name!r} in this entry's manifest")
        return self._shards[shard_name]

    # ---- creation and opening -------------------------------------------------------------
    @classmethod
    def create_or_open(
        cls,
        root: str,
        spec: CacheSpec,
        index: ShardIndex,
        grid: int,
        geometry: Any,
        storage_options: dict[str, Any] | None = None,
        writer_id: str | None = None,
    ) -> CacheEntry:
        """The entry for `spec` under `root`, created if absent; safe when many processes race."""
        if spec.dataset_fingerprint != index.fingerprint:
            raise CacheMismatchError(
                f"spec.dataset_fingerprint {spec.dataset_fingerprint} is not the fingerprint of "
                f"the shards at hand ({index.fingerprint}); build the spec from this index"
            )
        if (spec.dataset, spec.split) != (index.dataset, index.split):
            raise CacheMismatchError(
                f"spec is for {spec.dataset}/{spec.split} but the index is {index.dataset}/{index.split}"
            )
        writer_id = writer_id or default_writer_id()
        url = f"{str(root).rstrip('/')}/{cache_key(spec)}"
        wanted = new_manifest(spec, index, grid, jsonable(geometry), writer_id)
        files = EntryFiles(url, storage_options)
        if not files.exists(MANIFEST_FILE):
            # Arrays first, manifest last: a manifest therefore always means the arrays exist.
            create_arrays(_zarr_store(f"{url}/{MAPS_GROUP}", storage_options, False), wanted)
            files.put_if_absent(MANIFEST_FILE, pretty_json(wanted))
        found = files.get_json(MANIFEST_FILE)
        require_same_identity(url, found, wanted)
        entry = cls(url, found, storage_options, index=index, writer_id=writer_id)
        entry.check_arrays()
        return entry

    def _maps_url(self) -> str:
        return f"{self.path}/{MAPS_GROUP}"

    def group(self, writable: bool = False) -> zarr.Group:
        """The Zarr group of the arrays (plain zarr; rows of pending shards are meaningless)."""
        # Opened once per mode: on object stores each open costs a client and a few requests.
        if writable not in self._groups:
            store = _zarr_store(self._maps_url(), self.storage_options, read_only=not writable)
            self._groups[writable] = zarr.open_group(store, mode="r+" if writable else "r")
        return self._groups[writable]

    def check_arrays(self) -> None:
        """CacheMismatchError unless every array is stored as the manifest says."""
        try:
            group = self.group()
        except (FileNotFoundError, zarr.errors.BaseZarrError) as err:
            raise CacheMismatchError(
                f"{self._maps_url()}: maps group missing or unreadable ({err})"
            ) from err
        for name, expected in self.manifest["arrays"].items():
            if name not in group:
                raise CacheMismatchError(f"{self._maps_url()}: array {name!r} is missing")
            array = group[name]
            found = {
                "data_type": array.metadata.to_dict()["data_type"],
                "shape": list(array.shape),
                "chunks": list(array.chunks),
            }
            if found != expected:
                raise CacheMismatchError(
                    f"{self._maps_url()}/{name}: stored {found} but the manifest says {expected}"
                )

    def check_matches(self, index: ShardIndex) -> None:
        """Raise CacheMismatchError unless this entry was built from exactly these shards."""
        mine = self.manifest["spec"]["dataset_fingerprint"]
        if mine != index.fingerprint:
            raise CacheMismatchError(
                f"cache entry {self.path} was built from shards with fingerprint {mine}, but the "
                f"shards at hand have fingerprint {index.fingerprint}; extract maps for these shards"
            )
        if [s["name"] for s in self.manifest["shards"]] != [s.name for s in index.shards]:
            raise CacheMismatchError(f"cache entry {self.path}: shard list differs from the index")

    # ---- shard state ----------------------------------------------------------------------
    def committed_shards(self) -> set[str]:
        names = self._files.list_names(COMMITS_DIR, suffix=".json")
        return {n.removesuffix(".json") for n in names} & set(self._shards)

    def pending_shards(self) -> list[str]:
        """Shards without a commit record, in index order (the work a rerun still has to do)."""
        done = self.committed_shards()
        return [name for name in self.shard_names if name not in done]

    def shard_states(self) -> dict[str, str]:
        done = self.committed_shards()
        return {name: "committed" if name in done else "pending" for name in self.shard_names}

    def commit_record(self, shard_name: str) -> dict[str, Any]:
        self._shard_info(shard_name)
        try:
            return self._files.get_json(f"{COMMITS_DIR}/{shard_name}.json")
        except FileNotFoundError as err:
            raise ShardNotCommittedError(self._not_committed_message(shard_name)) from err

    def _not_committed_message(self, shard_name: str) -> str:
        return (
            f"{self.path}: shard {shard_name} is not committed (pending or interrupted); "
            "its rows are not readable until an extraction run commits it"
        )

    # ---- claims ---------------------------------------------------------------------------
    def claim_shard(self, shard_name: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """True if this writer may compute `shard_name` now: it is pending and nobody else
        holds a live claim (see `ShardClaims.take`). Calling it again renews the lease."""
        self._shard_info(shard_name)
        if not self._claims.take(shard_name, lease_s):
            return False
        # A writer may have committed and released between our pending check and our claim.
        if self._files.exists(f"{COMMITS_DIR}/{shard_name}.json"):
            self.release_shard(shard_name)
            return False
        return True

    @contextlib.contextmanager
    def claim(self, shard_name: str, lease_s: float = DEFAULT_LEASE_S) -> Iterator[bool]:
        """`with entry.claim(name) as mine:` compute and write_shard only if `mine`; the claim
        is released on the way out, also when the computation fails."""
        mine = self.claim_shard(shard_name, lease_s)
        try:
            yield mine
        finally:
            if mine:
                self.release_shard(shard_name)

    def release_shard(self, shard_name: str) -> None:
        """Drop this writer's claim (never someone else's)."""
        self._claims.release(shard_name)

    # ---- writing and reading --------------------------------------------------------------
    def write_shard(self, shard_name: str, maps: ShardMaps) -> bool:
        """Store one shard's rows, then its commit record. False if it was already committed."""
        info = self._shard_info(shard_name)
        where = f"{self.path} shard {shard_name}"
        if len(maps) != info["count"]:
            raise ValueError(f"{where}: got {len(maps)} rows, the shard has {info['count']}")
        expected_keys = None
        if self._index is not None:
            expected_keys = next(s.keys for s in self._index.shards if s.name == shard_name)
        maps.check(self.grid, where, expected_keys)
        if self._files.exists(f"{COMMITS_DIR}/{shard_name}.json"):
            self.release_shard(shard_name)
            return False
        start, stop = self.shard_rows(shard_name)
        group = self.group(writable=True)
        # Every chunk is stored, also one that equals the fill value (all rows valid: reasons all
        # ""), so that a missing chunk of a committed shard always means damage.
        arrays = {n: group[n].with_config({"write_empty_chunks": True}) for n in ROW_ARRAYS}
        # One slice assignment per array covering exactly one chunk: written whole, never merged.
        for name in MAP_ARRAYS:
            arrays[name][start:stop] = np.asarray(
                getattr(maps, name), dtype=np.float16
            )  # [n, G, G]
        arrays["valid"][start:stop] = np.asarray(maps.valid, dtype=bool)  # [n]
        arrays["fg_correct"][start:stop] = np.asarray(maps.fg_correct, dtype=np.int8)  # [n]
        for name, values in (("key", maps.keys), ("reason", maps.reason), ("answer", maps.answer)):
            arrays[name][start:stop] = np.array(values, dtype=str)  # [n]
        record = _commit_record(self, shard_name, info, maps)
        created = self._files.put_if_absent(f"{COMMITS_DIR}/{shard_name}.json", pretty_json(record))
        self.release_shard(shard_name)
        return created

    @overload
    def read_shard(self, shard_name: str) -> ShardMaps: ...

    @overload
    def read_shard(self, shard_name: str, fields: Sequence[str]) -> dict[str, np.ndarray]: ...

    def read_shard(
        self, shard_name: str, fields: Sequence[str] | None = None
    ) -> ShardMaps | dict[str, np.ndarray]:
        """The committed rows of one shard: all of them as ShardMaps or, with `fields`, only the
        arrays named there (e.g. `("key", "c_vlm", "valid")` for the student: the rest stays
        on disk), one chunk read each. ShardNotCommittedError for a shard without a commit."""
        self._shard_info(shard_name)
        if not self._files.exists(f"{COMMITS_DIR}/{shard_name}.json"):
            raise ShardNotCommittedError(self._not_committed_message(shard_name))
        start, stop = self.shard_rows(shard_name)
        names = ROW_ARRAYS if fields is None else fields
        unknown = [name for name in names if name not in ROW_ARRAYS]
        if unknown:
            raise KeyError(f"{self.path}: no arrays named {unknown} (have {list(ROW_ARRAYS)})")
        arrays = {name: self._array(name)[start:stop] for name in names}  # one chunk each
        if fields is not None:
            return arrays
        return ShardMaps(
            keys=[str(k) for k in arrays["key"]],
            c_vlm=arrays["c_vlm"],
            c_fore=arrays["c_fore"],
            c_back=arrays["c_back"],
            valid=arrays["valid"],
            reason=[str(r) for r in arrays["reason"]],
            answer=[str(a) for a in arrays["answer"]],
            fg_correct=arrays["fg_correct"],
        )

    def chunk_stored(self, name: str, shard_name: str) -> bool:
        """Whether this shard's chunk of array `name` exists (a missing chunk reads back as the
        fill value, silently: zeros, invalid rows, empty keys)."""
        array = self._array(name)
        start, _ = self.shard_rows(shard_name)
        coords = (start // array.chunks[0],) + (0,) * (array.ndim - 1)
        return self._files.exists(f"{MAPS_GROUP}/{name}/{array.metadata.encode_chunk_key(coords)}")

    def array_codecs(self, name: str) -> list[dict[str, Any]]:
        """The stored codec pipeline of array `name` (its zarr.json), e.g. to tell checksummed
        entries from older ones."""
        return list(self._array(name).metadata.to_dict()["codecs"])

    def uncommit_shard(self, shard_name: str) -> bool:
        """Mark a committed shard pending again (its commit record removed), so the next
        extraction recomputes and rewrites its chunks whole; `cache verify --repair` does this
        for damaged shards only. False if it was not committed."""
        self._shard_info(shard_name)
        relative = f"{COMMITS_DIR}/{shard_name}.json"
        if not self._files.exists(relative):
            return False
        self._files.remove(relative)
        return True

    def _array(self, name: str) -> zarr.Array:
        # Opened once per entry: on object stores each open costs a metadata request.
        if name not in self._arrays:
            self._arrays[name] = self.group()[name]
        return self._arrays[name]

    def foreign_commits(self) -> list[str]:
        """Commit records of shards this entry's manifest does not list (damage, for verify)."""
        names = self._files.list_names(COMMITS_DIR, suffix=".json")
        return [n for n in names if n.removesuffix(".json") not in self._shards]

    def put_file(self, relative: str, data: bytes) -> str:
        """Store a side file of the entry (previews, audit records) through the entry's own file
        layer: atomic locally, one PUT on object stores. Returns its URL."""
        if relative.split("/", 1)[0] in RESERVED_NAMES:
            raise ValueError(f"{self.path}: {relative!r} is part of the entry's format")
        self._files.put(relative, data)
        return self._files.url_of(relative)

    def summary(self) -> dict[str, Any]:
        """Counts for the flow's summary artifact, from the commit records alone (cheap)."""
        committed = sorted(self.committed_shards())
        by_reason: Counter[str] = Counter()
        rows = valid = fg_right = fg_wrong = 0
        for name in committed:
            record = self.commit_record(name)
            rows += record["count"]
            valid += record["valid"]
            by_reason.update(record["invalid_by_reason"])
            fg_right += record["fg_correct"]["correct"]
            fg_wrong += record["fg_correct"]["wrong"]
        known = fg_right + fg_wrong
        return {
            "cache_key": self.key,
            "path": self.path,
            "rows_total": int(self.manifest["num_rows"]),
            "shards_total": len(self._shards),
            "shards_committed": len(committed),
            "shards_pending": len(self._shards) - len(committed),
            "rows_written": rows,
            "rows_valid": valid,
            "rows_invalid": rows - valid,
            "invalid_by_reason": dict(sorted(by_reason.items())),
            "fg_known": known,
            "fg_accuracy": fg_right / known if known else None,
        }


def _commit_record(
    entry: CacheEntry, shard_name: str, info: dict[str, Any], maps: ShardMaps
) -> dict[str, Any]:
    return {
        "shard": shard_name,
        "sha256": info["sha256"],
        "cache_key": entry.key,
        "row_start": info["row_offset"],
        "row_stop": info["row_offset"] + info["count"],
        "count": info["count"],
        **row_counts(maps.valid, maps.reason, maps.fg_correct),
        "writer": entry.writer_id,
        "committed_at": utc_now(),
    }
