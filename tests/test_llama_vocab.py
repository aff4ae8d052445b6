"""The real LLaVA-1.5 vocabulary rebuilt from npm, and the tiny teacher that carries it.

References: Llama-2's published ids ("Hello this is a test" -> [1, 15043, 445, 338, 263, 1243],
as in transformers' LlamaTokenizer docstring), SentencePiece's byte-fallback rule (byte b is
piece `<0xBB>` = id b + 3), and llava-hf/llava-1.5-7b-hf's config.json values.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import teacher_fixtures
from transformers import AutoTokenizer, LlavaProcessor

from teacher.weights import llama_vocab
from teacher.weights.llama_vocab import LlamaVocabularyError, ensure_llama_tokenizer, fetch_npm_js


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_llama_tokenizer())


def test_llama_2_ids(tokenizer):
    assert tokenizer("Hello this is a test")["input_ids"] == [1, 15043, 445, 338, 263, 1243]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    assert tokenizer.pad_token_id == 32001 and tokenizer.padding_side == "left"
    assert len(tokenizer) == 32002


def test_byte_fallback_and_round_trip(tokenizer):
    text = "a café 😀 dog’s"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    emoji = [b + 3 for b in "😀".encode()]  # <0xF0> <0x9F> <0x98> <0x80>
    assert any(ids[i : i + 4] == emoji for i in range(len(ids)))
    assert tokenizer.decode(ids) == text
    # The image token splits the text; nothing between it and the newline is invented.
    ids = tokenizer("USER: <image>\nWhat", add_special_tokens=False)["input_ids"]
    assert ids[ids.index(32000) + 1] == 13  # <0x0A>


def test_tiny_llama_teacher_has_llava_hf_values(tmp_path_factory):
    tiny = teacher_fixtures.built_tiny_dir("llama", tmp_path_factory)
    config = json.loads((tiny / "config.json").read_text())
    # llava-hf's config.json keys: image_token_index, pad_token_id, text vocab 32064
    assert config["image_token_index"] == 32000 and config["pad_token_id"] == 32001
    assert config["text_config"]["vocab_size"] == 32064
    assert config["text_config"]["max_position_embeddings"] == 4096
    assert config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    processor = LlavaProcessor.from_pretrained(tiny)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "USER: <image>\nHi? ASSISTANT:"
    crop = processor.image_processor.crop_size
    assert (crop["height"], crop["width"]) == (336, 336)
    assert processor.image_processor.resample == 3  # bicubic


def test_missing_npm_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(llama_vocab.shutil, "which", lambda name: None)
    with pytest.raises(LlamaVocabularyError, match="needs npm"):
        fetch_npm_js(tmp_path)


def test_unreachable_registry_is_a_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "npm"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'npm ERR! network request failed' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(LlamaVocabularyError, match="network request failed"):
        fetch_npm_js(tmp_path)
    # A failed build leaves no half-built cache behind.
    with pytest.raises(LlamaVocabularyError):
        ensure_llama_tokenizer(tmp_path / "tok")
    assert not (tmp_path / "tok").exists()
