"""Which map-cache entries a dense student may train on: maps of the dense prompt (Eq. 12) only.

A detection run aligned to maps asked with a classification prompt would silently learn the
wrong target (one object word instead of all of them), so such an entry is refused by name.
"""

from __future__ import annotations

from pipeline.cache import CacheEntry


def entry_prompt(entry: CacheEntry) -> str:
    return str(entry.spec.teacher.get("prompt", {}).get("name", "?"))


def fits_task(entry: CacheEntry, task: str) -> bool:
    """Dense tasks need dense-prompt maps; classification takes any entry (as before)."""
    return task == "classify" or entry_prompt(entry) == "dense"


def check_entry_for_task(entry: CacheEntry, task: str) -> None:
    if not fits_task(entry, task):
        raise ValueError(
            f"cache entry {entry.path} holds maps of prompt {entry_prompt(entry)!r}, but TASK="
            f"{task} aligns to the dense prompt's C_VLM (Eq. 12); extract with --prompt dense "
            "(the default for detection datasets) and pass that entry"
        )


def visual_prompt(entry: CacheEntry) -> str:
    """'boxes' or 'language only' (Table 9), for listings."""
    width = entry.spec.teacher.get("visual_prompt", {}).get("box_width", 0)
    return "boxes" if width else "language only"
