"""Typed configuration of the foundation commands (Prefect renders such models as UI forms)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from pipeline.paths import shards_root

# Samples per shard, and so per cache chunk and per teacher task: the one default every command
# that writes shards uses (make shards, the extract and train flows, bench.loader).
DEFAULT_SHARD_SIZE = 1000


class ShardsConfig(BaseModel):
    dataset: str = Field("sample", description="a name from data/registry.json")
    split: str = Field("train", description="train | val (ImageFolder sets: a domain or 'all')")
    root: Path | None = Field(None, description="raw dataset folder; default: the registry's")
    shards: Path = Field(default_factory=shards_root, description="output root")
    shard_size: int = Field(
        DEFAULT_SHARD_SIZE, ge=1, description="samples per shard (the last is shorter)"
    )

    def shard_dir(self) -> Path:
        return self.shards / self.dataset / self.split
