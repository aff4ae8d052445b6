"""Where the student backbone's pretrained weights come from, checked before timm loads them.

timm fetches a ViT's weights from the Hugging Face hub (`timm/<name>.<tag>`) with
huggingface_hub's `hf_hub_download`, so it honours huggingface_hub's offline mode: once
pipeline.hub has decided the hub is unreachable, timm reads only the local Hugging Face cache.
This module asks timm which repository and files it would read, looks them up in that cache
with huggingface_hub's own lookup, and turns a miss into one error that says what was looked
for, where, and how to supply the weights; a hit is used offline, with a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from huggingface_hub import try_to_load_from_cache
from timm.models import get_pretrained_cfg
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives, hf_split

from pipeline.errors import UserError
from pipeline.hub import HubAccess, hub_access, hub_cache_dir, note


class WeightsUnavailableError(UserError, RuntimeError):
    """The pretrained backbone could not be had; the message says how to supply it."""


class HubWeights(NamedTuple):
    """The hub files timm reads for a model's pretrained weights, first choice first."""

    repo_id: str
    revision: str | None
    files: tuple[str, ...]


def timm_hub_weights(model: str, model_kwargs: dict | None = None) -> HubWeights | None:
    """What `timm.create_model(model, pretrained=True, **model_kwargs)` downloads from the hub,
    resolved by timm's own rules (pretrained tag, `pretrained_cfg_overlay`, safetensors first);
    None when its weights come from elsewhere (a URL, a file) or it has none."""
    pretrained = get_pretrained_cfg(model)
    if pretrained is None:
        return None
    cfg = {**pretrained.to_dict(), **(model_kwargs or {}).get("pretrained_cfg_overlay", {})}
    load_from, location = _resolve_pretrained_source(cfg)
    if load_from != "hf-hub":
        return None
    hub_id, filename = location if isinstance(location, tuple) else (location, HF_WEIGHTS_NAME)
    repo_id, revision = hf_split(hub_id)
    files = (
        (filename,)
        if filename.endswith(".safetensors")
        else (*_get_safe_alternatives(filename), filename)
    )
    return HubWeights(repo_id, revision, files)


def ensure_hub_weights(model: str, model_kwargs: dict | None = None) -> None:
    """Before timm loads `model`'s pretrained weights from the hub: decide whether the hub is
    reachable; when it is not, the weights must be in the local Hugging Face cache."""
    access = hub_access()
    if access.online:
        return
    weights = timm_hub_weights(model, model_kwargs)
    if weights is None:  # not from the hub: timm's own loader reports what it lacks
        return
    for filename in weights.files:
        path = try_to_load_from_cache(weights.repo_id, filename, revision=weights.revision)
        if isinstance(path, str):
            note(
                f"student backbone {model}: the hub is not used ({access.reason}); loading "
                f"{weights.repo_id}/{filename} from the local Hugging Face cache, {path}"
            )
            return
    raise offline_error(model, weights, access)


def check_weights_source(model: str, weights: str | None, model_kwargs: dict | None) -> None:
    """Before a run starts: the backbone's weights can be had (`weights`: None for timm's hub
    weights, 'none' for random ones, else a file), or WeightsUnavailableError says how."""
    if weights is not None and weights.lower() == "none":
        return
    if weights is not None:
        if not Path(weights).is_file():
            raise missing_file_error(model, Path(weights))
        return
    ensure_hub_weights(model, model_kwargs)


def missing_file_error(model: str, path: Path) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"StudentConfig.weights: no such file {path} (expected a .safetensors, .pth or .bin "
        f"state dict of {model}; WEIGHTS=none for random weights)"
    )


def download_hint(model: str, weights: HubWeights | None) -> str:
    """The command that fetches `model`'s weights on a machine with network, and how to pass them."""
    if weights is None:
        return (
            f"timm does not load {model}'s weights from the Hugging Face hub; download its "
            "checkpoint elsewhere and pass the file with WEIGHTS=/path/to/checkpoint"
        )
    revision = f" --revision {weights.revision}" if weights.revision else ""
    folder = weights.repo_id.rsplit("/", 1)[-1]
    return (
        f"on a machine with network: `hf download {weights.repo_id} {weights.files[0]}"
        f"{revision} --local-dir {folder}`, copy the file here, then "
        f"`make train WEIGHTS=/path/to/{folder}/{weights.files[0]}` (StudentConfig.weights)"
    )


def offline_error(model: str, weights: HubWeights, access: HubAccess) -> WeightsUnavailableError:
    at_revision = f"@{weights.revision}" if weights.revision else ""
    revision = f" --revision {weights.revision}" if weights.revision else ""
    return WeightsUnavailableError(
        f"pretrained weights for the student backbone {model} are not available offline: the "
        f"Hugging Face hub is not used ({access.reason}), and timm's weights for it, "
        f"{weights.repo_id}{at_revision} ({' or '.join(weights.files)}), are not in the local "
        f"Hugging Face cache {hub_cache_dir()}.\n"
        "Supply them in one of these ways:\n"
        f"  - {download_hint(model, weights)}\n"
        f"  - or download them into a Hugging Face cache there (`hf download {weights.repo_id} "
        f"{weights.files[0]}{revision}`) and point HF_HOME (or HF_HUB_CACHE) at a copy of that "
        "cache here\n"
        "  - or try the pipeline with WEIGHTS=none (random backbone weights: tests and the demo "
        "only)"
    )
