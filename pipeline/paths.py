"""Where the project keeps its data: `data/` in the repository unless LFI_DATA_DIR says otherwise.

One function per data root, so `LFI_DATA_DIR=/scratch make extract` moves shards, caches, runs,
models and Prefect's home together; every default path in a config or a command line is one of
these (the Makefile passes a path only when the user sets one).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("LFI_DATA_DIR", PROJECT_ROOT / "data"))


def shards_root() -> Path:
    """WebDataset shards: <root>/<dataset>/<split>/shard-*.tar + index.json."""
    return data_dir() / "shards"


def cache_root() -> Path:
    """Map-cache entries: <root>/<cache_key>/."""
    return data_dir() / "cache"


def runs_root() -> Path:
    """Student runs: <root>/<run name>/."""
    return data_dir() / "runs"


def models_dir() -> Path:
    """Local checkpoints: the tiny teachers, stand-in backbones, the npm Llama tokenizer."""
    return data_dir() / "models"


def experiments_root() -> Path:
    """Experiment grids (make experiment): <root>/<spec name>/."""
    return data_dir() / "experiments"


def prefect_home() -> Path:
    """PREFECT_HOME of the temporary local server (its SQLite database, logs, auth string)."""
    return data_dir() / "prefect"


def bench_dir() -> Path:
    """Data the benchmarks generate for themselves."""
    return data_dir() / "bench"


def resolve(path: str | Path) -> Path:
    """Relative paths in configs are relative to the project root, not the caller's cwd."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path
