"""A checkpoint's identity by content: what its maps depend on, never how its files are spelled.

Two teams share map-cache entries exactly when their teachers would compute the same maps. So the
key names the checkpoint by what the model reads, not by where or how it is stored:
- weights: the sha256 of each weight file's bytes. The Hugging Face cache already names an LFS
  blob by it (snapshots/<commit>/<file> links to blobs/<sha256>), so a hub checkpoint costs no
  read; a plain folder is hashed once and remembered by (path, size, mtime) in `DigestMemo`.
- config, processor and tokenizer files: sha256 of their values as canonical JSON (sorted keys,
  no whitespace), without the keys that only record provenance (`transformers_version`,
  `_name_or_path`, ...). Re-indenting or reordering a config.json keeps the key; changing a value
  changes it. Text files (merges.txt, a chat template) and tokenizer.model are hashed as bytes.
- never the folder's name, the hub id, the commit or a file's formatting: a hub id and a local
  copy of the same snapshot are one teacher.

Library versions are not in the key: the lock file (requirements.lock) pins the ones a deployment
runs, and every entry records them (`library_versions` in its manifest), so a team that suspects a
release changed attention numerics can see which versions wrote an entry and choose another cache
root. Putting them in the key would split every shared cache at each patch release.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pipeline.io import file_sha256

# What transformers reads besides the weights (config, processor, tokenizer, generation); a
# checkpoint's README, licence or git files do not change a map.
READ_FILES = (
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Keys that record where or with what a file was written, not a value the model uses. The
# tokenizer config records `local_files_only` (whether the hub was used when it was saved).
PROVENANCE_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "local_files_only"}
)
IDENTITY_FORMAT = 1
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def checkpoint_patterns() -> list[str]:
    """The files of a checkpoint that its identity reads (for snapshot_download's allow_patterns)."""
    return [*READ_FILES, *WEIGHT_PATTERNS]


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors when there are any (what from_pretrained
    prefers), else PyTorch pickles."""
    for pattern in WEIGHT_PATTERNS:
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def without_provenance(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_provenance(v) for k, v in value.items() if k not in PROVENANCE_KEYS}
    if isinstance(value, list):
        return [without_provenance(v) for v in value]
    return value


def value_digest(path: Path) -> str:
    """sha256 of a read file's values: canonical JSON for .json, the bytes otherwise."""
    data = path.read_bytes()
    if path.suffix == ".json":
        values = without_provenance(json.loads(data))
        data = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


class DigestMemo:
    """sha256 of large files, remembered by (real path, size, mtime) in one JSON file, so a
    local 14 GB checkpoint is read once, not at every extraction. Stale or unreadable memos are
    recomputed; concurrent writers can only lose an entry, never corrupt one (atomic replace)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text()) if self.path else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def sha256(self, file: Path) -> str:
        real = file.resolve()
        if _SHA256_NAME.fullmatch(real.name) and real.parent.name == "blobs":
            return real.name  # the Hugging Face cache names an LFS blob by its sha256
        stat = real.stat()
        memo_key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
        entries = self._load()
        if memo_key not in entries:
            entries[memo_key] = file_sha256(real)
            self._save()
        return entries[memo_key]

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(self._entries, indent=1, sort_keys=True))
            temporary.replace(self.path)
        except OSError:
            pass  # a read-only data folder: the digest is still right, only not remembered


def checkpoint_identity(folder: Path, memo: DigestMemo) -> dict[str, Any]:
    """What identifies the checkpoint in `folder` by content (see the module docstring)."""
    weights = {file.name: memo.sha256(file) for file in weight_files(folder)}
    files = {name: value_digest(folder / name) for name in READ_FILES if (folder / name).is_file()}
    return {"format": IDENTITY_FORMAT, "weights_sha256": weights, "files_sha256": files}
