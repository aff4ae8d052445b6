"""What `python -m flows.extract` prints, and finding out before Prefect starts that a run would
have nothing to do (a fully committed entry for these params), so a rerun answers in seconds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import fsspec

from pipeline.cache import cache_key, open_entry
from pipeline.cache.report import REPORT_JSON, REPORT_PNG
from pipeline.errors import MissingInputError
from pipeline.shards.records import INDEX_FILE

if TYPE_CHECKING:
    from flows.extract_params import ExtractParams

PRINTED_FIELDS = ("cache_key", "path", "rows_written", "rows_invalid", "fg_accuracy")


def existing_previews(entry_path: str, count: int) -> list[str]:
    """Up to `count` preview PNGs an earlier run saved in the entry (URLs)."""
    if count <= 0:
        return []
    fs, path = fsspec.core.url_to_fs(f"{entry_path}/previews")
    if not fs.exists(path):
        return []
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".png"))
    return [f"{entry_path}/previews/{name}" for name in names[:count]]


def existing_files(entry_path: str, names: list[str]) -> list[str]:
    fs, path = fsspec.core.url_to_fs(entry_path)
    return [f"{entry_path}/{name}" for name in names if fs.exists(f"{path}/{name}")]


def committed_summary(params: ExtractParams) -> dict[str, Any] | None:
    """The entry's summary when every shard of these params is committed already; None when a
    run has work to do (shards to write, an entry to create, shards pending)."""
    from flows.extract_entry import entry_spec  # the flow's own definition of its entry

    if not (params.shard_dir() / INDEX_FILE).exists():
        return None  # the run writes the shards first
    spec, index, _ = entry_spec(params)
    location = f"{params.cache_root.rstrip('/')}/{cache_key(spec)}"
    try:
        entry = open_entry(location, expect=spec, index=index)
    except MissingInputError:
        return None
    if entry.pending_shards():
        return None
    summary = entry.summary()
    summary["previews"] = existing_previews(entry.path, params.previews)
    summary["report"] = existing_files(entry.path, [REPORT_JSON, REPORT_PNG])
    return summary


def print_outcome(summary: dict[str, Any], note: str | None = None) -> None:
    """The lines a user (and `make demo`) reads after a run, the same with or without a run."""
    if note:
        print(note)
    print(json.dumps({k: summary[k] for k in PRINTED_FIELDS}, indent=1))
    print(f"map cache entry: {summary['path']}")
    if summary["previews"]:
        # A URL, not a Path: Path("s3://b/k") would print "s3:/b/k".
        print(f"preview overlays: {summary['previews'][0].rsplit('/', 1)[0]}")
    if summary.get("report"):
        print(f"map-quality report: {' '.join(summary['report'])}")
