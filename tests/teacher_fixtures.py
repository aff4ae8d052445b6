"""Fixtures for the teacher tests: one tiny LLaVA per session, tiny generated images.

Import the fixtures into a test module (`from tests.teacher_fixtures import tiny_dir, ...`);
pytest finds them there. Everything runs on the CPU in float32, where the fast path must equal
the eager reference within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor

from teacher import TeacherConfig, TeacherInput, load_teacher
from teacher.model import Teacher
from teacher.weights.tiny import build_tiny_teacher

VOCABULARY = ["goldfish", "golden retriever", "tarantula", "circle"]


_BUILT: dict[str, Path] = {}


def built_tiny_dir(vocab: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny teacher per vocabulary per session (the llama one reuses the cached tokenizer
    under data/models, built from npm once, by the same code a user runs)."""
    torch.set_num_threads(1)
    if vocab not in _BUILT:
        _BUILT[vocab] = build_tiny_teacher(tmp_path_factory.mktemp(f"tiny-llava-{vocab}"), vocab)
    return _BUILT[vocab]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_tiny_dir("bpe", tmp_path_factory)


@pytest.fixture(scope="session", params=["bpe", "llama"])
def tiny_dir_each_vocab(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny teachers: the small byte-level BPE, and the real Llama-2 vocabulary with
    llava-hf's ids (<image> 32000, <pad> 32001, 32064 rows)."""
    return built_tiny_dir(request.param, tmp_path_factory)


def make_teacher(tiny_dir: Path, vocabulary: list[str] | None = None, **overrides) -> Teacher:
    base = {"model": str(tiny_dir), "quant": "none", "dtype": "float32", "device": "cpu"}
    config = TeacherConfig(**{**base, **overrides})
    return load_teacher(config, vocabulary=vocabulary or VOCABULARY)


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def sample_items() -> list[TeacherInput]:
    """Different sizes (different geometry) and class names of 1..5 tokens (different padding)."""
    return [
        TeacherInput("a", noise_image(64, 64, 0), [(10, 10, 40, 50)], "goldfish", 0),
        TeacherInput("b", noise_image(80, 50, 1), [(5, 5, 30, 30)], "golden retriever", 1),
        TeacherInput("c", noise_image(50, 90, 2), [], "tarantula", 2),
    ]


class ScriptedAnswer(LogitsProcessor):
    """Makes the random tiny model 'write' a given answer through ordinary decode steps.

    Only the choice of token is scripted; every decode step still runs the model, so the rows
    captured during generation are the model's own attention for those tokens.
    """

    def __init__(self, answer_ids: list[int], prompt_length: int, eos_id: int) -> None:
        self.answer_ids = answer_ids
        self.prompt_length = prompt_length
        self.eos_id = eos_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        token = self.answer_ids[step] if step < len(self.answer_ids) else self.eos_id
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


def script_answers(teacher: Teacher, answer: str) -> None:
    """Every generate call of `teacher` (fast or naive) now writes `answer`."""
    tokenizer = teacher.tokenizer
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    original = teacher.generate_kwargs

    def generate_kwargs(encoded):
        kwargs = original(encoded)
        processor = ScriptedAnswer(ids, encoded.prompt_length, tokenizer.eos_token_id)
        return {**kwargs, "logits_processor": [processor]}

    teacher.generate_kwargs = generate_kwargs  # type: ignore[method-assign]
