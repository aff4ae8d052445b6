"""Typed configuration of the foundation commands (Prefect renders such models as UI forms)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from pipeline.paths import shards_root


def default_shards_root() -> Path:
    return shards_root()


class ShardsConfig(BaseModel):
    dataset: str = Field("sample", description="a name from data/registry.json")
    split: str = Field("train", description="train | val (ImageFolder sets: a domain or 'all')")
    root: Path | None = Field(None, description="raw dataset folder; default: the registry's")
    shards: Path = Field(default_factory=default_shards_root, description="output root")
    shard_size: int = Field(1000, ge=1, description="samples per shard (the last is shorter)")

    def shard_dir(self) -> Path:
        return self.shards / self.dataset / self.split
