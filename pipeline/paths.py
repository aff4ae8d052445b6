"""Where the project keeps its data: `data/` in the repository unless LFI_DATA_DIR says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("LFI_DATA_DIR", PROJECT_ROOT / "data"))


def resolve(path: str | Path) -> Path:
    """Relative paths in configs are relative to the project root, not the caller's cwd."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path
