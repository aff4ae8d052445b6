"""What a checkpoint's files say about the teacher, read without transformers or torch.

The cache key needs a few facts of the checkpoint (image size, image tokens, layers, context
length, a fingerprint of the files) and token counts of the prompts. They are read here from
config.json, the processor's JSON and tokenizer.json (the `tokenizers` library is what
transformers' fast tokenizers run), so finding out that every shard is committed costs
milliseconds. A checkpoint whose files leave a fact to transformers' defaults (llava-hf's
config.json omits the Llama layer counts, for one) is read through transformers instead, the way
the loaded model will read it; `Teacher` checks that the loaded model agrees with the facts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.paths import data_dir
from teacher.config import TeacherConfig
from teacher.hub_weights import (
    CONFIG_FILE,
    TeacherWeightsError,
    cached_file,
    ensure_teacher_files,
    is_hub_id,
)

TINY_ALIAS = "tiny"
TINY_LLAMA_ALIAS = "tiny-llama"  # the tiny teacher with the real LLaVA-1.5 vocabulary
TOKENIZER_FILE = "tokenizer.json"
# transformers 5 saves the image processor inside processor_config.json; older checkpoints
# (llava-hf's) keep it in preprocessor_config.json.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def default_tiny_dir(vocab: str = "bpe") -> Path:
    """Where `TEACHER=tiny` (`tiny-llama`) lives: data/models/tiny-llava(-llama)."""
    return data_dir() / "models" / ("tiny-llava-llama" if vocab == "llama" else "tiny-llava")


def resolve_model(model: str) -> str:
    """The checkpoint's folder or hub id (`tiny`, `tiny-llama` name the local tiny teachers)."""
    if model in (TINY_ALIAS, TINY_LLAMA_ALIAS):
        vocab = "llama" if model == TINY_LLAMA_ALIAS else "bpe"
        tiny_dir = default_tiny_dir(vocab)
        if not (tiny_dir / CONFIG_FILE).exists():
            make = "make tiny-teacher" + (" VOCAB=llama" if vocab == "llama" else "")
            raise TeacherWeightsError(
                f"TEACHER={model} but {tiny_dir} holds no checkpoint; build it with "
                f"`{make}` (python -m teacher.tiny --vocab {vocab} --out {tiny_dir})"
            )
        return str(tiny_dir)
    return model


def is_tiny_checkpoint(source: str) -> bool:
    """The tiny random teachers (teacher.tiny) run anywhere; real checkpoints need a GPU."""
    return (Path(source) / "TINY_TEACHER.json").exists()


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
    commit: str | None = None  # the hub commit, when transformers recorded one


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
        commit=getattr(config, "_commit_hash", None),
    )


def checkpoint_file(source: str, name: str, revision: str | None) -> Path | None:
    """A file of the checkpoint on this disk (its folder, or the local Hugging Face cache)."""
    if is_hub_id(source):
        found = cached_file(source, name, revision)
        return Path(found) if found else None
    path = Path(source) / name
    return path if path.is_file() else None


def _read_json(path: Path | None) -> dict | None:
    try:
        return json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None  # unreadable here: transformers reads it, and says what is wrong


def _crop_height(source: str, revision: str | None) -> int | None:
    for name in PROCESSOR_FILES:
        data = _read_json(checkpoint_file(source, name, revision))
        if data is None:
            continue
        crop = data.get("image_processor", data).get("crop_size")
        return int(crop["height"]) if isinstance(crop, dict) and "height" in crop else None
    return None


def facts_from_files(source: str, revision: str | None) -> CheckpointFacts | None:
    """The facts as the checkpoint's JSON states them, or None when any is left to defaults
    (then only transformers knows the value)."""
    config = _read_json(checkpoint_file(source, CONFIG_FILE, revision))
    if config is None or config.get("model_type") != "llava":
        return None
    text = config.get("text_config") or {}
    # transformers 5 writes image_token_id as image_token_index (LlavaConfig.attribute_map).
    image_token = config.get("image_token_id", config.get("image_token_index"))
    values = {
        "image_size": _crop_height(source, revision),
        "num_image_tokens": config.get("image_seq_length"),
        "image_token_id": image_token,
        "num_layers": text.get("num_hidden_layers"),
        "num_heads": text.get("num_attention_heads"),
        "max_positions": text.get("max_position_embeddings"),
    }
    if any(not isinstance(v, int) or isinstance(v, bool) for v in values.values()):
        return None
    return CheckpointFacts(source=source, **values)


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


def read_checkpoint(cfg: TeacherConfig) -> tuple[CheckpointFacts, Any]:
    """(facts, a tokenizer for token counts) of cfg.model, from its files where they suffice,
    else through transformers (which also turns a missing checkpoint into TeacherWeightsError)."""
    source = resolve_model(cfg.model)
    ensure_teacher_files(source, cfg.revision)  # offline: the local HF cache, or a clear error
    facts = facts_from_files(source, cfg.revision)
    tokenizer_file = checkpoint_file(source, TOKENIZER_FILE, cfg.revision)
    tokenizer = FileTokenizer(tokenizer_file) if tokenizer_file is not None else None
    if facts is None or tokenizer is None:
        from teacher.loading import load_config_and_processor  # transformers (and torch)

        config, processor, source = load_config_and_processor(cfg)
        if facts is None:
            crop = processor.image_processor.crop_size["height"]
            facts = facts_from_config(source, config, crop)
        tokenizer = tokenizer or processor.tokenizer
    if facts.commit is None:  # after transformers' load, which may have just downloaded it
        facts = dataclasses.replace(facts, commit=snapshot_commit(facts.source, cfg.revision))
    return facts, tokenizer


def snapshot_commit(source: str, revision: str | None) -> str | None:
    """The hub commit that `source` at `revision` resolves to in the local Hugging Face cache:
    the name of the snapshot folder holding its config.json (the cache's layout is
    snapshots/<commit>/). transformers 5 no longer records it on the config, and without it two
    revisions of one hub id would share a cache key. None for a folder on disk."""
    if not is_hub_id(source):
        return None
    found = cached_file(source, CONFIG_FILE, revision)
    return Path(found).parent.name if found else None


def weights_fingerprint(facts: CheckpointFacts) -> dict:
    """What identifies the weights: the hub commit when known, else hashes of local files."""
    fingerprint: dict = {"source": facts.source, "commit": facts.commit}
    path = Path(facts.source)
    if path.is_dir():
        # The folder's name only: the same files under /a/llava and /b/llava are one teacher,
        # so teams on different mounts of a shared cache land on the same entry.
        fingerprint["source"] = path.resolve().name
        digest = hashlib.sha256()
        for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.json")):
            # Header + size is enough to tell checkpoints apart without reading 14 GB.
            with file.open("rb") as fh:
                digest.update(file.name.encode() + fh.read(1 << 20))
            digest.update(str(file.stat().st_size).encode())
        fingerprint["files_sha256"] = digest.hexdigest()
    fingerprint["text_layers"] = facts.num_layers
    return fingerprint
