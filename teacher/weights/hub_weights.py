"""A hub-id teacher when the hub cannot be reached: its copy in the local Hugging Face cache, or
one clear error that says what was looked for, where, and how to supply it.

Called before anything of the checkpoint is loaded. Online, or for a local directory, it does
nothing (transformers downloads or reads the folder as usual). Offline (pipeline.hub decided
so), transformers would read the same cache; checking the files first, with huggingface_hub's
own cache lookup, turns a missing checkpoint into an error that names the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from pipeline.errors import UserError
from pipeline.hub import HubAccess, hub_access, hub_cache_dir, note

CONFIG_FILE = "config.json"  # transformers.utils.CONFIG_NAME


def weight_files() -> tuple[str, ...]:
    """What transformers' from_pretrained looks for, in its order of preference (imported when
    asked: transformers is not needed to describe a teacher)."""
    from transformers.utils import (
        SAFE_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
    )

    return (SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME)


class TeacherWeightsError(UserError, RuntimeError):
    """The checkpoint could not be found locally nor downloaded."""


def is_hub_id(source: str) -> bool:
    """A hub repo id (org/name) rather than a folder on disk."""
    if Path(source).exists():
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def cached_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    """The file's path in the local Hugging Face cache, or None."""
    path = try_to_load_from_cache(repo_id, filename, revision=revision)
    return path if isinstance(path, str) else None  # None, or a "known not to exist" marker


def _missing_weights(repo_id: str, revision: str | None) -> str | None:
    """What the cached snapshot lacks ("weights", a shard's name), or None when complete."""
    names = weight_files()
    for name in names:
        found = cached_file(repo_id, name, revision)
        if found is None:
            continue
        if not name.endswith(".index.json"):
            return None
        shards = sorted(set(json.loads(Path(found).read_text())["weight_map"].values()))
        absent = [s for s in shards if cached_file(repo_id, s, revision) is None]
        return f"weight shard(s) {', '.join(absent)}" if absent else None
    return f"weights ({' or '.join(names)})"


def ensure_teacher_files(source: str, revision: str | None) -> None:
    """Offline, a hub-id teacher must be complete in the local cache; say so when it is used."""
    if not is_hub_id(source):
        return
    access = hub_access()
    if access.online:
        return
    config = cached_file(source, CONFIG_FILE, revision)
    missing = CONFIG_FILE if config is None else _missing_weights(source, revision)
    if missing is not None:
        raise offline_error(source, revision, access, missing)
    note(
        f"teacher {source}: the hub is not used ({access.reason}); loading the copy in the "
        f"local Hugging Face cache, {Path(config).parent}"
    )


def offline_error(
    source: str, revision: str | None, access: HubAccess, missing: str
) -> TeacherWeightsError:
    at_revision = f" at revision {revision}" if revision else ""
    revision_flag = f" --revision {revision}" if revision else ""
    folder = source.rsplit("/", 1)[-1]
    return TeacherWeightsError(
        f"teacher {source!r}{at_revision} is not available offline: the Hugging Face hub is not "
        f"used ({access.reason}), and the local Hugging Face cache {hub_cache_dir()} lacks its "
        f"{missing}.\n"
        "Supply the weights in one of these ways:\n"
        f"  - on a machine with network: `hf download {source}{revision_flag} --local-dir "
        f"{folder}`, copy that folder here, then TEACHER=/path/to/{folder}\n"
        f"  - or download it into a Hugging Face cache there (`hf download {source}"
        f"{revision_flag}`) and point HF_HOME (or HF_HUB_CACHE) at a copy of that cache here\n"
        "  - or try the pipeline with TEACHER=tiny (`make tiny-teacher` builds a random tiny "
        "LLaVA-1.5 offline; its maps are noise)"
    )
