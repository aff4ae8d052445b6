"""Words of any script are whole words; byte-fallback characters never shift later spans."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from teacher.maps.answers import normalize, parse_dict_answer, word_spans
from teacher.maps.spans import decode_with_spans, tokens_of
from teacher.weights.llama_vocab import ensure_llama_tokenizer


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("café crème, naïve", ["café", "crème", "naïve"]),
        ("dog’s bowl and dog's bone", ["dog’s", "bowl", "and", "dog's", "bone"]),
        ("go-kart ‘quoted’ Zürich_see", ["go-kart", "quoted", "Zürich", "see"]),
    ],
)
def test_non_ascii_and_typographic_apostrophes_are_one_word(text, words):
    assert [text[a:b] for a, b in word_spans(text)] == words


def test_dict_answer_with_non_ascii_names():
    text = "{'foreground': 'café', 'background': 'dog’s bowl, crème'}"
    parsed = parse_dict_answer(text, expected_foreground="café")
    assert parsed.foreground_text == "café"
    assert [text[a:b] for a, b in parsed.background] == ["dog’s", "bowl", "crème"]
    assert normalize("Café!") == "café" == normalize(parsed.foreground_text)


def test_spans_after_byte_fallback_are_exact():
    tokenizer = AutoTokenizer.from_pretrained(ensure_llama_tokenizer())
    text = "🌿😀 grass, ☃sky é"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert (
        sum(tokenizer.convert_ids_to_tokens(ids)[k].startswith("<0x") for k in range(len(ids))) >= 8
    )
    decoded, spans = decode_with_spans(tokenizer, ids)
    assert decoded == text
    assert spans[-1][1] == len(text) and all(s <= e for s, e in spans)
    for match in re.finditer(r"\w+", text):  # each word's tokens decode to exactly that word
        tokens = [ids[k] for k in tokens_of(match.span(), spans)]
        assert tokenizer.decode(tokens).strip() == match.group()
