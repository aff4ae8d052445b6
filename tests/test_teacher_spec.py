"""The weightless teacher (teacher.spec / teacher.weights.checkpoint): same cache keys as before the
split, no torch or transformers to compute them, and token counts equal to the processor's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import teacher_fixtures
from teacher_fixtures import VOCABULARY, built_tiny_dir

from pipeline.cache import CacheSpec, cache_key
from teacher import TeacherConfig, describe_teacher
from teacher.prompting.prompts import PROMPTS, chat_text, forced_answer_text, question_text
from teacher.weights.checkpoint import FileTokenizer, facts_from_files, resolve_checkpoint

# Regression guard, not values copied from the code under test: these keys were computed once,
# when keys became content identities (teacher.weights.identity, SPEC_FORMAT 2), by building each tiny
# teacher with `teacher.weights.tiny.build_tiny_teacher(<tmp>/<any name>, vocab)` (deterministic: seed 0)
# under the packages of requirements.lock, and printing cache_key(CacheSpec(dataset="sample",
# split="train", dataset_fingerprint="fp-0", teacher=describe_teacher(TeacherConfig(model=<dir>,
# device="cpu", **change), VOCABULARY).spec())). They change only when what a map depends on
# changes: the spec, or the tiny teacher's files' values (a locked release that writes other
# config values or other random weights: then `make lock` says so, and these are recomputed).
# The folder's name and HF_HUB_OFFLINE (recorded by the llama tokenizer's config as
# `local_files_only`) no longer matter.
TINY_KEYS = {
    ("bpe", "default"): "950e9feae3d2b8db",
    ("bpe", "generate"): "6355dd46c4809942",
    ("bpe", "dense"): "5cf89c7355c7dbfe",
    ("bpe", "layers"): "c7dfea9c9192f1d6",
    ("llama", "default"): "eb99e093dd08b5ba",
    ("llama", "generate"): "11a0529703b7d1d0",
    ("llama", "dense"): "4a807b8c212b4a2c",
    ("llama", "layers"): "464fadfad200d4c6",
}
CHANGES = {
    "default": {},
    "generate": {"answer_mode": "generate"},  # the budget counts the longest name's tokens
    "dense": {"prompt": "dense"},
    "layers": {"layers": [-1], "heads": [0, 3], "quant": "none", "dtype": "float32"},
}
# The same way, for the baselines (no checkpoint at all).
BASELINE_KEYS = {
    ("box", "pad"): "029e7cc79503d3b1",
    ("box", "crop"): "fcc4276ddce50390",
    ("uniform", "pad"): "7529176a42a43587",
    ("uniform", "crop"): "3a124b3a6583987e",
}

tiny_dir = teacher_fixtures.tiny_dir  # session fixture


def key_of(teacher_spec: dict) -> str:
    spec = CacheSpec(
        dataset="sample", split="train", dataset_fingerprint="fp-0", teacher=teacher_spec
    )
    return cache_key(spec)


@pytest.fixture(scope="module", params=["bpe", "llama"])
def named_tiny(request, tmp_path_factory) -> tuple[str, Path]:
    """The session's tiny teacher, copied under a folder name of its own."""
    folder = tmp_path_factory.mktemp(f"named-{request.param}") / "some-teacher"
    shutil.copytree(built_tiny_dir(request.param, tmp_path_factory), folder)
    return request.param, folder


def test_cache_keys_are_pinned(named_tiny):
    vocab, folder = named_tiny
    for change, extra in CHANGES.items():
        cfg = TeacherConfig(model=str(folder), device="cpu", **extra)
        assert key_of(describe_teacher(cfg, VOCABULARY).spec()) == TINY_KEYS[vocab, change]


def test_baseline_cache_keys_are_those_of_main_before_the_split():
    for (model, view), expected in BASELINE_KEYS.items():
        cfg = TeacherConfig(model=model, view=view)
        assert key_of(describe_teacher(cfg, VOCABULARY).spec()) == expected


def test_describing_imports_neither_torch_nor_transformers(tiny_dir):
    code = f"""
import json, sys
from teacher import TeacherConfig, describe_teacher
described = describe_teacher(TeacherConfig(model={str(tiny_dir)!r}, device="cpu"), ["cat", "dog"])
print(json.dumps([described.grid, "torch" in sys.modules, "transformers" in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [24, False, False]


def test_file_tokenizer_counts_like_the_processor(named_tiny):
    from transformers import LlavaProcessor

    _, folder = named_tiny
    processor_tokenizer = LlavaProcessor.from_pretrained(folder).tokenizer
    counted = FileTokenizer(folder / "tokenizer.json")
    names = [*VOCABULARY, "café", "dog’s", "🐟 fish", "pot  pie", " leading", "Ünïcode-x"]
    texts = list(names)
    for template in PROMPTS.values():
        for name in names:
            question = question_text(template, names, [name], "[background]")
            forced = forced_answer_text(template, name, [name]) if template.forced_answer else ""
            texts += [chat_text(question, forced), chat_text(question, ""), " " + forced]
    for text in texts:
        for special in (True, False):
            expected = processor_tokenizer(text, add_special_tokens=special)["input_ids"]
            assert counted(text, add_special_tokens=special)["input_ids"] == expected, text


def test_a_config_silent_on_a_fact_is_read_through_transformers(tiny_dir, tmp_path):
    """llava-hf's config.json leaves the Llama layer counts to LlamaConfig's defaults: only
    transformers knows them, so the files alone must not decide."""
    folder = tmp_path / "silent"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["text_config"]["num_hidden_layers"]
    (folder / "config.json").write_text(json.dumps(config))
    assert facts_from_files(resolve_checkpoint(str(folder), None)) is None
    described = describe_teacher(TeacherConfig(model=str(folder), device="cpu"), VOCABULARY)
    assert described.facts.num_layers == 32  # LlamaConfig's default


def test_a_loaded_model_that_disagrees_with_the_files_is_refused(tiny_dir):
    """The key describes the files; a model whose config says otherwise must not write under it."""
    import dataclasses

    from teacher.model import Teacher
    from teacher.spec import TeacherSpec

    loaded = teacher_fixtures.make_teacher(tiny_dir)
    described = loaded.description
    facts = dataclasses.replace(described.facts, max_positions=4096)
    other = TeacherSpec(
        described.cfg, described.vocabulary, facts, loaded.tokenizer, described.weights
    )
    with pytest.raises(RuntimeError, match=r"max_positions.*4096, 2048"):
        Teacher(other, loaded.model, loaded.processor)
