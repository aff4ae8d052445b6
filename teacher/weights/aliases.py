"""Teacher names that are not checkpoints' own: `tiny` and `tiny-llama`, the local random teachers
that `make tiny-teacher` builds, and how to tell a tiny checkpoint from a real one. Read by the
checkpoint resolver, the device choice and the loader alike; imports nothing of the teacher."""

from __future__ import annotations

from pathlib import Path

from pipeline.paths import models_dir
from teacher.weights.hub_weights import CONFIG_FILE, TeacherWeightsError

TINY_ALIAS = "tiny"
TINY_LLAMA_ALIAS = "tiny-llama"  # the tiny teacher with the real LLaVA-1.5 vocabulary
TINY_MARKER = "TINY_TEACHER.json"  # written by teacher.weights.tiny beside the checkpoint


def default_tiny_dir(vocab: str = "bpe") -> Path:
    """Where `TEACHER=tiny` (`tiny-llama`) lives: data/models/tiny-llava(-llama)."""
    return models_dir() / ("tiny-llava-llama" if vocab == "llama" else "tiny-llava")


def resolve_model(model: str) -> str:
    """The checkpoint's folder or hub id (`tiny`, `tiny-llama` name the local tiny teachers)."""
    if model in (TINY_ALIAS, TINY_LLAMA_ALIAS):
        vocab = "llama" if model == TINY_LLAMA_ALIAS else "bpe"
        tiny_dir = default_tiny_dir(vocab)
        if not (tiny_dir / CONFIG_FILE).exists():
            make = "make tiny-teacher" + (" VOCAB=llama" if vocab == "llama" else "")
            raise TeacherWeightsError(
                f"TEACHER={model} but {tiny_dir} holds no checkpoint; build it with "
                f"`{make}` (python -m teacher.weights.tiny --vocab {vocab} --out {tiny_dir})"
            )
        return str(tiny_dir)
    return model


def is_tiny_checkpoint(source: str) -> bool:
    """The tiny random teachers (teacher.weights.tiny) run anywhere; real checkpoints need a GPU."""
    return (Path(source) / TINY_MARKER).exists()
