"""Named sets of flow parameters (flat names, as on the command line), read by both the
Makefile's demos (`python -m flows.train --preset demo`) and the benchmarks that must train the
same model, so a demo's settings are declared in one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).resolve().parent


def preset_path(name: str) -> Path:
    """A preset's file: `demo` is experiments/presets/demo.yaml; a path is itself."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else PRESETS_DIR / f"{name}.yaml"


def load_preset(name: str) -> dict[str, Any]:
    path = preset_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ValueError(f"--preset {name}: no such preset ({path}); known: {known}")
    values = yaml.safe_load(path.read_text())
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset is a mapping of flat parameter names to values")
    return values
