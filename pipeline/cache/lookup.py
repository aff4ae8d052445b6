"""Finding and opening existing map-cache entries: one by its location (refused if it was built
for another spec or other shards), or every entry under a root."""

from __future__ import annotations

from typing import Any

from pipeline.cache.entry import CacheEntry
from pipeline.cache.files import EntryFiles
from pipeline.cache.manifest import MANIFEST_FILE, check_self_consistent, spec_differences
from pipeline.cache.spec import CacheMismatchError, CacheSpec, cache_key, full_cache_hash
from pipeline.errors import MissingInputError
from pipeline.shards.records import ShardIndex


def open_entry(
    path_or_url: str,
    storage_options: dict[str, Any] | None = None,
    expect: CacheSpec | None = None,
    index: ShardIndex | None = None,
) -> CacheEntry:
    """Open an existing entry; refuse it if it was built for another `expect` spec or from
    shards other than `index` (which also lets write_shard check row keys, e.g. in a flow task
    that is handed only the entry's path)."""
    url = str(path_or_url).rstrip("/")
    files = EntryFiles(url, storage_options)
    try:
        manifest = files.get_json(MANIFEST_FILE)
    except FileNotFoundError as err:
        raise MissingInputError(
            f"no map-cache entry at {url} ({MANIFEST_FILE} missing); "
            "`python -m pipeline cache ls <root>` lists the entries of a root"
        ) from err
    check_self_consistent(url, manifest)
    if expect is not None and manifest["cache_hash"] != full_cache_hash(expect):
        wanted = expect.model_dump(mode="json")
        details = spec_differences(manifest["spec"], wanted)
        raise CacheMismatchError(
            f"{url} holds maps for another spec (entry {manifest['cache_key']}, requested "
            f"{cache_key(expect)}; differs in: {', '.join(details[:8]) or 'format'})"
        )
    entry = CacheEntry(url, manifest, storage_options, index=index)
    if index is not None:
        entry.check_matches(index)
    entry.check_arrays()
    return entry


def scan_root(
    root: str, storage_options: dict[str, Any] | None = None
) -> tuple[list[CacheEntry], list[str]]:
    """Entries under `root`, and one message per directory that looks like a broken entry."""
    files = EntryFiles(str(root), storage_options)
    entries, problems = [], []
    for name in files.list_names(""):
        if not files.exists(f"{name}/{MANIFEST_FILE}"):
            continue
        try:
            entries.append(open_entry(files.url_of(name), storage_options))
        except (CacheMismatchError, ValueError, OSError) as err:
            problems.append(f"{files.url_of(name)}: {err}")
    return entries, problems


def list_entries(root: str, storage_options: dict[str, Any] | None = None) -> list[CacheEntry]:
    return scan_root(root, storage_options)[0]
