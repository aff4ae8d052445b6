"""The weightless teacher (teacher.spec / teacher.checkpoint): same cache keys as before the
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
from teacher.checkpoint import FileTokenizer, facts_from_files
from teacher.prompts import PROMPTS, chat_text, forced_answer_text, question_text

# Regression guard, not values copied from the code under test: these keys were computed once on
# main at f4a0b13 (before teacher/extract.py was split), by building each tiny teacher with
# `teacher.tiny.build_tiny_teacher(<tmp>/tiny-llava, vocab)` (deterministic: seed 0, checked by
# building twice) and printing cache_key(CacheSpec(dataset="sample", split="train",
# dataset_fingerprint="fp-0", teacher=describe_teacher(TeacherConfig(model=<dir>, device="cpu",
# **change), VOCABULARY).spec())). They change only when what a map depends on changes, or when
# the tiny teacher's files do (a transformers release that writes config.json differently).
# The llama teacher's tokenizer_config.json records transformers' `local_files_only`, which
# follows HF_HUB_OFFLINE when it is built, so its keys were computed both ways (conftest sets
# HF_HUB_OFFLINE=1 unless the environment says otherwise).
TINY_KEYS = {
    ("bpe", "default"): "9f82d47d1ce12141",
    ("bpe", "generate"): "9612d44cfce4f1ff",
    ("bpe", "dense"): "9fd62a16326cd761",
    ("bpe", "layers"): "45062f14b36aae0a",
    ("llama-offline", "default"): "a12b30d5f2e6ace0",
    ("llama-offline", "generate"): "11a5e28908012665",
    ("llama-offline", "dense"): "f9da241cf6b6af17",
    ("llama-offline", "layers"): "a795ea176d5011a2",
    ("llama-online", "default"): "8e7c76fdf03d8de7",
    ("llama-online", "generate"): "0188a1c4bef28964",
    ("llama-online", "dense"): "73bca169124b146c",
    ("llama-online", "layers"): "d84fa60c14b82dec",
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
    """The session's tiny teacher under the folder name the keys were computed with."""
    folder = tmp_path_factory.mktemp(f"named-{request.param}") / "tiny-llava"
    shutil.copytree(built_tiny_dir(request.param, tmp_path_factory), folder)
    return request.param, folder


def test_cache_keys_are_those_of_main_before_the_split(named_tiny):
    vocab, folder = named_tiny
    if vocab == "llama":
        offline = json.loads((folder / "tokenizer_config.json").read_text())["local_files_only"]
        vocab = "llama-offline" if offline else "llama-online"
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
    assert facts_from_files(str(folder), None) is None
    described = describe_teacher(TeacherConfig(model=str(folder), device="cpu"), VOCABULARY)
    assert described.spec()["weights"]["text_layers"] == 32  # LlamaConfig's default


def test_a_loaded_model_that_disagrees_with_the_files_is_refused(tiny_dir):
    """The key describes the files; a model whose config says otherwise must not write under it."""
    import dataclasses

    from teacher.model import Teacher
    from teacher.spec import TeacherSpec

    loaded = teacher_fixtures.make_teacher(tiny_dir)
    described = loaded.description
    facts = dataclasses.replace(described.facts, max_positions=4096)
    other = TeacherSpec(described.cfg, described.vocabulary, facts, loaded.tokenizer)
    with pytest.raises(RuntimeError, match=r"max_positions.*4096, 2048"):
        Teacher(other, loaded.model, loaded.processor)
