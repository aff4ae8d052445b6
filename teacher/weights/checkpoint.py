"""What a checkpoint's files say about the teacher, read without transformers or torch.

The cache key needs a few facts of the checkpoint (image size, image tokens, layers, context
length), its identity by content (teacher.weights.identity) and token counts of the prompts. They are read here from
config.json, the processor's JSON and tokenizer.json (the `tokenizers` library is what
transformers' fast tokenizers run), so finding out that every shard is committed costs
milliseconds. A checkpoint whose files leave a fact to transformers' defaults (llava-hf's
config.json omits the Llama layer counts, for one) is read through transformers instead, the way
the loaded model will read it; `Teacher` checks that the loaded model agrees with the facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.hub import hub_access
from pipeline.paths import models_dir
from teacher.config import TeacherConfig
from teacher.weights.aliases import resolve_model
from teacher.weights.hub_weights import (
    CONFIG_FILE,
    TeacherWeightsError,
    ensure_teacher_files,
    is_hub_id,
)
from teacher.weights.identity import DigestMemo, checkpoint_identity, checkpoint_patterns

TOKENIZER_FILE = "tokenizer.json"
# transformers 5 saves the image processor inside processor_config.json; older checkpoints
# (llava-hf's) keep it in preprocessor_config.json.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class CheckpointFacts:
    """The numbers of a LLaVA checkpoint that shape its maps and prompts."""

    source: str  # resolved folder or hub id
    image_size: int  # the processor's crop: the teacher's square view (336 for LLaVA-1.5)
    num_image_tokens: int  # image tokens in the language model's input (576)
    image_token_id: int
    num_layers: int  # decoder layers of the language model
    num_heads: int  # attention heads per decoder layer
    max_positions: int  # the language model's context (max_position_embeddings)


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a teacher's checkpoint is: what from_pretrained is given (`source`: a folder, or a
    hub id) and the folder on this disk that holds its files (the folder itself, or the hub
    id's snapshot in the local Hugging Face cache). Resolved once, by `resolve_checkpoint`."""

    source: str
    folder: Path
    revision: str | None

    def file(self, name: str) -> Path | None:
        path = self.folder / name
        return path if path.is_file() else None


def resolve_checkpoint(model: str, revision: str | None) -> CheckpointFiles:
    """The one resolver of a teacher name (`tiny`, `tiny-llama`, a folder, a hub id) to its
    files. A hub id is fetched the way from_pretrained would (online: downloaded into the local
    Hugging Face cache, weights included, since the maps need them anyway; offline: the cached
    snapshot, or TeacherWeightsError saying how to supply it)."""
    source = resolve_model(model)
    if not is_hub_id(source):
        return CheckpointFiles(source, Path(source), revision)
    ensure_teacher_files(source, revision)  # offline: complete in the local cache, or the fix
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            source,
            revision=revision,
            allow_patterns=checkpoint_patterns(),
            local_files_only=not hub_access().online,
        )
    except (OSError, ValueError) as err:  # no such repo or revision, or a network failure
        raise TeacherWeightsError(f"teacher {source!r}: could not fetch its files ({err})") from err
    return CheckpointFiles(source, Path(folder), revision)


def facts_from_config(source: str, config: Any, image_size: int) -> CheckpointFacts:
    """Facts of a transformers LlavaConfig (a loaded model's, or one built in memory)."""
    text = config.text_config
    return CheckpointFacts(
        source=source,
        image_size=int(image_size),
        num_image_tokens=int(config.image_seq_length),
        image_token_id=int(config.image_token_id),
        num_layers=int(text.num_hidden_layers),
        num_heads=int(text.num_attention_heads),
        max_positions=int(text.max_position_embeddings),
    )


def _read_json(path: Path | None) -> dict | None:
    try:
        return json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None  # unreadable here: transformers reads it, and says what is wrong


def _crop_height(files: CheckpointFiles) -> int | None:
    for name in PROCESSOR_FILES:
        data = _read_json(files.file(name))
        if data is None:
            continue
        crop = data.get("image_processor", data).get("crop_size")
        return int(crop["height"]) if isinstance(crop, dict) and "height" in crop else None
    return None


def facts_from_files(files: CheckpointFiles) -> CheckpointFacts | None:
    """The facts as the checkpoint's JSON states them, or None when any is left to defaults
    (then only transformers knows the value)."""
    config = _read_json(files.file(CONFIG_FILE))
    if config is None or config.get("model_type") != "llava":
        return None
    text = config.get("text_config") or {}
    # transformers 5 writes image_token_id as image_token_index (LlavaConfig.attribute_map).
    image_token = config.get("image_token_id", config.get("image_token_index"))
    values = {
        "image_size": _crop_height(files),
        "num_image_tokens": config.get("image_seq_length"),
        "image_token_id": image_token,
        "num_layers": text.get("num_hidden_layers"),
        "num_heads": text.get("num_attention_heads"),
        "max_positions": text.get("max_position_embeddings"),
    }
    if any(not isinstance(v, int) or isinstance(v, bool) for v in values.values()):
        return None
    return CheckpointFacts(source=files.source, **values)


class FileTokenizer:
    """tokenizer.json through the `tokenizers` library, called like a transformers tokenizer
    for what the spec needs: token ids of a text (tests/test_teacher_spec.py checks that the
    ids equal the processor's tokenizer's on both tiny vocabularies)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self._tokenizer = Tokenizer.from_file(str(path))

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": encoding.ids}


@dataclass(frozen=True)
class Checkpoint:
    """What describing a teacher needs of its checkpoint: the facts, a tokenizer for token
    counts, and its identity by content (teacher.weights.identity), which the cache key hashes."""

    facts: CheckpointFacts
    tokenizer: Any
    identity: dict


def digest_memo() -> DigestMemo:
    """Where local weight files' sha256 are remembered (see teacher.weights.identity.DigestMemo)."""
    return DigestMemo(models_dir() / "sha256-memo.json")


def read_checkpoint(cfg: TeacherConfig) -> Checkpoint:
    """cfg.model's facts, tokenizer and identity, from its files where they suffice, else
    through transformers (which also turns a missing checkpoint into TeacherWeightsError)."""
    files = resolve_checkpoint(cfg.model, cfg.revision)
    facts = facts_from_files(files)
    tokenizer_file = files.file(TOKENIZER_FILE)
    tokenizer = FileTokenizer(tokenizer_file) if tokenizer_file is not None else None
    if facts is None or tokenizer is None:
        from teacher.weights.loading import load_config_and_processor  # transformers (and torch)

        config, processor, source = load_config_and_processor(cfg)
        if facts is None:
            crop = processor.image_processor.crop_size["height"]
            facts = facts_from_config(source, config, crop)
        tokenizer = tokenizer or processor.tokenizer
    return Checkpoint(facts, tokenizer, checkpoint_identity(files.folder, digest_memo()))
