"""Loading: the tiny teacher's architecture, 4-bit/8-bit on the CPU, missing weights, spec()."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import bitsandbytes as bnb
import numpy as np
import pytest
import teacher_fixtures
from teacher_fixtures import VOCABULARY, make_teacher, sample_items
from transformers import LlavaForConditionalGeneration

from teacher import TeacherConfig, TeacherWeightsError, load_teacher
from teacher.naive import extract_naive

tiny_dir = teacher_fixtures.tiny_dir  # session fixture


def test_tiny_teacher_is_llava_15_shaped(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    vision = config["vision_config"]
    assert (vision["image_size"], vision["patch_size"]) == (336, 14)
    assert config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    teacher = make_teacher(tiny_dir)
    assert isinstance(teacher.model, LlavaForConditionalGeneration)
    assert teacher.grid == 24 and teacher.num_image_tokens == 576
    encoded = teacher.encode([teacher.prepare(sample_items()[0])])
    assert int((encoded.inputs["input_ids"] == teacher.image_token_id).sum()) == 576


@pytest.mark.parametrize(
    ("quant", "layer_type"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")]
)
def test_quantized_tiny_teacher_extracts_on_cpu(tiny_dir, quant, layer_type):
    teacher = make_teacher(tiny_dir, quant=quant, batch_size=2)
    q_proj = teacher.model.model.language_model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == layer_type and isinstance(q_proj, getattr(bnb.nn, layer_type))
    items = sample_items()[:2]
    results = teacher.extract(items)
    for item, result in zip(items, results, strict=True):
        assert result.valid, result.reason
        assert f"'foreground': '{item.class_name}'" in result.answer
        assert np.isclose(result.c_vlm.sum(), 1.0, atol=1e-5)
    if quant == "4bit":  # same quantized weights, only the attention path differs
        for fast, naive in zip(results, extract_naive(teacher, items), strict=True):
            assert fast.answer == naive.answer
            np.testing.assert_allclose(fast.c_fore, naive.c_fore, atol=1e-4)
    assert teacher.spec()["quant"] == quant


def test_missing_local_weights_say_how_to_fix(tmp_path):
    with pytest.raises(TeacherWeightsError, match="TEACHER=") as err:
        load_teacher(TeacherConfig(model=str(tmp_path / "nowhere"), device="cpu"), VOCABULARY)
    assert "TEACHER=tiny" in str(err.value) and "nowhere" in str(err.value)


def test_unreachable_hub_weights_say_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing downloaded before
    with pytest.raises(TeacherWeightsError, match=re.escape("llava-hf/llava-1.5-7b-hf")):
        load_teacher(TeacherConfig(device="cpu"), VOCABULARY)


def test_tiny_alias(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LFI_DATA_DIR", str(tmp_path / "data"))  # the alias follows the data dir
    with pytest.raises(TeacherWeightsError, match="make tiny-teacher"):
        load_teacher(TeacherConfig(model="tiny", device="cpu"), VOCABULARY)
    (tmp_path / "data" / "models").mkdir(parents=True)
    (tmp_path / "data" / "models" / "tiny-llava").symlink_to(tiny_dir)
    teacher = load_teacher(TeacherConfig(model="tiny", quant="none", device="cpu"), VOCABULARY)
    assert teacher.grid == 24


def test_spec_records_what_changes_a_map(tiny_dir):
    base = make_teacher(tiny_dir)
    spec = base.spec()
    assert json.loads(json.dumps(spec)) == spec  # JSON-able
    assert spec["vocabulary"] == VOCABULARY
    assert spec["prompt"]["question"].startswith("If you are doing an image classification task")
    assert spec["weights"]["weights_sha256"]["model.safetensors"]
    assert make_teacher(tiny_dir, batch_size=1, device="cpu").spec() == spec
    for change in ({"prompt": "prompt2"}, {"box_width": 5}, {"view": "crop"}, {"layers": [0]},
                   {"answer_mode": "generate"}, {"box_color": (0, 255, 0)}):  # fmt: skip
        assert make_teacher(tiny_dir, **change).spec() != spec, change


@pytest.mark.slow
def test_tiny_builder_cli_is_deterministic(tiny_dir, tmp_path):
    out = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "teacher.weights.tiny", "--out", str(out)], check=True)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (out / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_bad_inputs_are_named(tiny_dir):
    with pytest.raises(ValueError, match="layers"):
        make_teacher(tiny_dir, layers=[7])
    with pytest.raises(ValueError, match="heads"):
        make_teacher(tiny_dir, heads=[4])
    item = sample_items()[0]
    item.boxes = [(30, 10, 20, 40)]  # x1 < x0
    with pytest.raises(ValueError, match=f"{item.key}: box"):
        make_teacher(tiny_dir).extract([item])
    assert make_teacher(tiny_dir).extract([]) == []


def test_tiny_llama_alias_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LFI_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(TeacherWeightsError, match="make tiny-teacher VOCAB=llama"):
        load_teacher(TeacherConfig(model="tiny-llama", device="cpu"), VOCABULARY)
