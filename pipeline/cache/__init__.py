"""The map cache (docs/design.md): content-addressed Zarr v3 entries of teacher maps, shard commits.

Format (format_version 1), readable with plain `json` and `zarr` (no code from this project):

```
<root>/<cache_key>/                  root: a local path or an fsspec URL (s3://bucket/prefix)
    manifest.json                    written once, atomically, when the entry is created
    maps.zarr/                       Zarr v3 group; row r of shard i is shards[i].row_offset + j
        c_vlm       float16 [N, G, G]  relu(C_fore - C_back) / sum; zeros on invalid rows
        c_fore      float16 [N, G, G]  raw head/layer mean of the foreground word's rows
        c_back      float16 [N, G, G]  raw head/layer mean of the background words' rows
        valid       bool    [N]
        reason      string  [N]        why a row is invalid ("" when valid)
        key         string  [N]        the sample's __key__ (row alignment is checkable)
        answer      string  [N]        the teacher's answer text
        fg_correct  int8    [N]        1 / 0, or -1 when unknown
    commits/<shard name>.json        commit record, written only after that shard's rows
    claims/<shard name>.json         a writer's lease on a shard while it computes it (transient:
                                     writer, host, pid, claimed_at, expires_at)
```

- `cache_key` = the first 16 hex digits of sha256 over the canonical JSON (sorted keys, no
  whitespace) of `CacheSpec`: dataset, split, dataset fingerprint (sha256 of the shards'
  index.json content), the teacher's full spec (checkpoint and revision or weights hash,
  quantization, dtype, prompt template and vocabulary, answer mode, visual prompt, layer/head/row
  selection, filter, view geometry mode) and the format version. The manifest holds the full hash
  (`cache_hash`) and the spec itself; an entry whose spec does not hash to its key is refused.
- `manifest.json`: `format_version`, `cache_key`, `cache_hash`, `spec`, `grid` (24 for
  LLaVA-1.5), `geometry` (how the teacher's G x G view maps onto original-image pixels, as the
  teacher reports it), `shard_size`, `num_rows` (N), `shards` (name, count, sha256, row_offset, in
  index order), `arrays` (data type, shape, chunks of each array), `library_versions`, `created`,
  `created_by`. Shard state is not stored in the manifest (it is written once, and rewriting one
  object per shard on S3 would race): a shard is committed iff its commit record exists.
- Every array is chunked along N by `shard_size`, so shard i is exactly chunk i of every array,
  written whole by one writer with one slice assignment. Every shard but the last has exactly
  `shard_size` rows. Strings use zarr 3's variable-length UTF-8 type (`data_type: "string"`,
  codec `vlen-utf8`); every array's chunks are zstd-compressed and then carry a crc32c of the
  compressed bytes (zarr v3's `crc32c` codec), so a damaged chunk fails its read; every chunk
  of a committed shard is stored, also one equal to the fill value. Entries written before
  checksums (zstd only, fill-value chunks left out) read as before and `cache verify` reports
  them as unchecksummed; codecs are not part of the cache key.
- Commit record: shard, sha256 (from index.json), cache_key, row_start, row_stop, count, valid,
  invalid, invalid_by_reason, fg_correct {correct, wrong, unknown}, writer, committed_at.
- A committed row is either valid (c_vlm finite, >= 0, sums to 1 within float16 rounding) or
  invalid with a non-empty reason and an all-zero c_vlm. `python -m pipeline cache verify` checks
  all of it; `--repair` marks the shards with problems pending again (their commit records
  removed) so the next extraction recomputes exactly those (`pipeline/cache/integrity.py`).
- Reading it without this project:
  `m = json.load(open(f"{entry}/manifest.json")); g = zarr.open_group(f"{entry}/maps.zarr", mode="r")`;
  use rows `[row_offset, row_offset + count)` of shards that have `commits/<name>.json`.

Writing (what the extraction flow does per shard):
`entry = CacheEntry.create_or_open(root, spec, index, grid, geometry)`, then for each name in
`entry.pending_shards()`: `with entry.claim(name) as mine:` and, if `mine`,
`entry.write_shard(name, ShardMaps.from_results(teacher.extract(items)))`. A claim is taken over
once its lease expires or, on the same host, once its process has died.

S3 and other object stores: pass `storage_options` (for example
`{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}`) or use the standard environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...). Exclusive creation uses `If-None-Match: *`.
"""

from pipeline.cache.entry import DEFAULT_LEASE_S, CacheEntry, ShardNotCommittedError
from pipeline.cache.lookup import list_entries, open_entry, scan_root
from pipeline.cache.rows import ShardMaps
from pipeline.cache.spec import (
    CACHE_FORMAT_VERSION,
    CacheMismatchError,
    CacheSpec,
    cache_key,
    full_cache_hash,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_LEASE_S",
    "CacheEntry",
    "CacheMismatchError",
    "CacheSpec",
    "ShardMaps",
    "ShardNotCommittedError",
    "cache_key",
    "full_cache_hash",
    "list_entries",
    "open_entry",
    "scan_root",
]
