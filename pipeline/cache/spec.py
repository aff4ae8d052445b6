"""What identifies a map-cache entry (docs/design.md): the spec, content key and mismatch error.

Everything that changes a map goes into `CacheSpec`, so two runs that would produce different
maps can never share an entry, and two that would produce the same maps always do.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import UserError
from pipeline.io import canonical_json

# Bump when the on-disk layout or the meaning of a stored value changes; old entries then get a
# new key instead of being misread.
CACHE_FORMAT_VERSION = 1

# 16 hex chars = 64 bits: collisions are out of reach for any number of entries a team keeps, and
# the directory name stays readable. The full hash is kept in the manifest and checked on open.
KEY_PREFIX_LENGTH = 16


class CacheMismatchError(UserError, RuntimeError):
    """An entry exists but was built for something else; reusing it would give wrong maps."""


class CacheSpec(BaseModel):
    """Everything that changes a map. `teacher` is `teacher.spec()`, recorded verbatim."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(min_length=1)
    split: str = Field(min_length=1)
    dataset_fingerprint: str = Field(min_length=1, description="ShardIndex.fingerprint")
    teacher: dict[str, Any] = Field(description="teacher.spec(): checkpoint, quant, prompt, ...")
    format_version: int = CACHE_FORMAT_VERSION

    @field_validator("teacher")
    @classmethod
    def _teacher_is_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The key is a hash of JSON; a value that JSON cannot hold (a tensor, a path object)
        # would make the key depend on repr() and silently split or merge entries.
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"teacher spec must be plain JSON ({err})") from err
        return value

    def canonical(self) -> str:
        return canonical_json(self.model_dump(mode="json"))


def full_cache_hash(spec: CacheSpec) -> str:
    return hashlib.sha256(spec.canonical().encode()).hexdigest()


def cache_key(spec: CacheSpec) -> str:
    """The entry's directory name: a prefix of sha256 over the spec's canonical JSON."""
    return full_cache_hash(spec)[:KEY_PREFIX_LENGTH]


def teacher_brief(spec: dict[str, Any]) -> str:
    """Checkpoint, quantization, prompt and answer mode: what tells two teachers apart at a
    glance (the full spec is in `cache show`)."""
    teacher = spec.get("teacher", {})
    weights, prompt = teacher.get("weights"), teacher.get("prompt")
    parts = [
        checkpoint_brief(weights) if isinstance(weights, dict) else teacher.get("model"),
        teacher.get("quant"),
        prompt.get("name") if isinstance(prompt, dict) else prompt,
        teacher.get("answer_mode"),
    ]
    return " ".join(str(p) for p in parts if p) or "-"


def checkpoint_brief(weights: dict[str, Any]) -> str:
    """A checkpoint named by content (teacher.weights.identity) has no name: show a short digest of it
    (`weights:3f2a9c0d1e4b`); entries from before that kept the folder name or hub id."""
    if "source" in weights:
        return str(weights["source"])
    return "weights:" + hashlib.sha256(canonical_json(weights).encode()).hexdigest()[:12]
