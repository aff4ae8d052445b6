"""Small file conventions shared by every stage: atomic writes, canonical JSON, image extensions.

One of each, so that a temp file always looks the same (`<name>.<random>.partial`, which the
cache's listings and the shard writer's cleanup skip or remove), and a hash over JSON always
means the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".partial"

# Every extension an image may carry: raw files (any case) and shard members (lower case), in
# the order a shard member is looked up.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff")

# Pillow format name -> the extension a shard member gets (webdataset decodes by extension).
PILLOW_FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "BMP": "bmp",
    "WEBP": "webp",
    "GIF": "gif",
    "TIFF": "tif",
}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower().removeprefix(".") in IMAGE_EXTENSIONS


def canonical_json(value: Any) -> str:
    """The one serialization hashed and compared everywhere: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pretty_json(value: Any) -> bytes:
    """What a person reads (manifests, commit records, configs): sorted, indented, newline."""
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def temp_path(path: Path) -> Path:
    """A fresh temp name beside `path` (same filesystem, so a rename is atomic)."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`with atomic_path(p) as tmp:` write `tmp`; on success it replaces `p` in one rename, so a
    reader sees the old file or the new one, never a torn one; on failure `tmp` is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (shards, weights, stand-in backbones)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
