"""Small JSON files of the map cache (manifest, commit records, claims) on any fsspec filesystem.

The cache needs exactly three file operations, and each must be atomic so that a reader or a
racing writer never sees half a file:
- `put`: replace a file whole (commit records are written only after the data they vouch for);
- `put_if_absent`: create a file only if nobody else has (the manifest, shard claims);
- `get_json` / `list_names`: read back, bypassing fsspec's listing cache, because another
  process may have written since we last looked.

Local paths get temp-file + rename/link (POSIX atomic); object stores get one PUT, which is atomic
by nature, and `If-None-Match: *` for create-if-absent (S3 and moto support it).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.io import TMP_SUFFIX, atomic_write_bytes, temp_path


class EntryFiles:
    """Atomic small-file access under one directory or URL prefix."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = path.rstrip("/")
        self.url = url.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def url_of(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def exists(self, relative: str) -> bool:
        self.fs.invalidate_cache(self.path(relative))
        return self.fs.exists(self.path(relative))

    def get_bytes(self, relative: str) -> bytes:
        self.fs.invalidate_cache(self.path(relative))
        return self.fs.cat_file(self.path(relative))

    def get_json(self, relative: str) -> Any:
        """Parsed JSON; a damaged file is an error naming it, not a silent default."""
        data = self.get_bytes(relative)
        try:
            return json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.url_of(relative)}: not valid JSON ({err})") from err

    def list_names(self, relative_dir: str, suffix: str = "") -> list[str]:
        """Base names in a directory (empty if it does not exist), fresh from the store."""
        directory = self.path(relative_dir)
        self.fs.invalidate_cache(directory)
        try:
            listed = self.fs.ls(directory, detail=False)
        except FileNotFoundError:
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed]
        return sorted(n for n in names if n.endswith(suffix) and TMP_SUFFIX not in n)

    def put(self, relative: str, data: bytes) -> None:
        """Replace `relative` whole; readers see the old or the new file, never a torn one."""
        if self.is_local:
            atomic_write_bytes(self.path(relative), data)
        else:
            self.fs.pipe_file(self.path(relative), data)
        self.fs.invalidate_cache(self.path(relative))

    def put_if_absent(self, relative: str, data: bytes) -> bool:
        """Create `relative` unless it exists; True if this call created it.

        Exactly one of several racing callers gets True (os.link fails on an existing name;
        S3 rejects a conditional PUT on an existing key).
        """
        if self.is_local:
            target = Path(self.path(relative))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path(target)
            tmp.write_bytes(data)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
            return True
        try:
            self.fs.pipe_file(self.path(relative), data, mode="create")
        except FileExistsError:
            return False
        except OSError:
            # Some S3 servers answer 412 without naming the condition, which s3fs maps to a
            # generic OSError; the file existing afterwards means we lost the race.
            if self.exists(relative):
                return False
            raise
        finally:
            self.fs.invalidate_cache(self.path(relative))
        return True

    def remove(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(relative))
        self.fs.invalidate_cache(self.path(relative))
