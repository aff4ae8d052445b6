"""Eq. 11 / Eq. 12 against hand-computed values, answer parsing, and the prompts as data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from teacher import TeacherConfig
from teacher.maps.answers import normalize, parse_dense_answer, parse_dict_answer
from teacher.maps.filters import NO_MASS, eq11, eq12
from teacher.prompting.generation import answer_closed
from teacher.prompting.prompts import (
    PROMPTS_FILE,
    chat_text,
    forced_answer_text,
    load_prompts,
    question_text,
)


def test_eq11_by_hand():
    fore = np.array([[0.5, 0.2], [0.2, 0.1]], np.float32)
    back = np.array([[0.1, 0.3], [0.2, 0.0]], np.float32)
    # fore - back = [[0.4, -0.1], [0.0, 0.1]] -> relu -> [[0.4, 0], [0, 0.1]], sum 0.5
    c_vlm, valid, reason = eq11(fore, back)
    assert valid and reason == ""
    np.testing.assert_allclose(c_vlm, [[0.8, 0.0], [0.0, 0.2]], atol=1e-6)
    assert c_vlm.dtype == np.float32


def test_eq12_by_hand():
    dog = np.array([[0.4, 0.0], [0.1, 0.0]])
    car = np.array([[0.0, 0.3], [0.1, 0.0]])
    back = np.array([[0.2, 0.2], [0.1, 0.3]])
    # dog + car - back = [[0.2, 0.1], [0.1, -0.3]] -> relu sum 0.4
    c_vlm, valid, _ = eq12([dog, car], back)
    assert valid
    np.testing.assert_allclose(c_vlm, [[0.5, 0.25], [0.25, 0.0]], atol=1e-6)


def test_no_positive_mass_is_invalid_zeros_not_nan():
    same = np.full((3, 3), 1 / 9)
    for c_vlm, valid, reason in (eq11(same, same), eq11(same, same * 2), eq12([], same)):
        assert not valid and reason
        assert np.array_equal(c_vlm, np.zeros((3, 3))) and not np.isnan(c_vlm).any()
    assert eq11(same, same)[2] == NO_MASS


@pytest.mark.parametrize(
    ("answer", "foreground", "background"),
    [
        ("{'foreground': 'golden retriever', 'background': 'grass, sky'}", "golden retriever",
         ["grass", "sky"]),
        ('{"foreground": "goldfish", "background": "water"}', "goldfish", ["water"]),
        ("Sure. {'foreground':{goldfish}, 'background':{water, rocks}} Hope it helps",
         "goldfish", ["water", "rocks"]),
        ("foreground: cat, background: sofa and wall", "cat", ["sofa", "wall"]),
        ("{'foreground': ['dog'], 'background': ['grass', 'tree']}", "dog", ["grass", "tree"]),
        ("{'foreground': 'dog', 'background': 'gra", "dog", ["gra"]),  # cut by max_new_tokens
        ("{'foreground': 'dog', 'background': ''}", "dog", []),
        ("I am not sure what this is.", None, []),
    ],
)  # fmt: skip
def test_dict_answers_parse(answer, foreground, background):
    parsed = parse_dict_answer(answer)
    assert parsed.foreground_text == foreground
    assert [answer[a:b] for a, b in parsed.background] == background
    if foreground:
        (a, b), = parsed.foreground  # fmt: skip
        assert answer[a:b] == foreground


def test_class_names_with_quotes_stay_whole():
    text = "{'foreground': 'potter's wheel', 'background': 'shelf, wall'}"
    parsed = parse_dict_answer(text, expected_foreground="potter's wheel")
    assert parsed.foreground_text == "potter's wheel"
    assert [text[a:b] for a, b in parsed.background] == ["shelf", "wall"]


def test_dense_answer_finds_each_target_once():
    text = "Yes, there are dogs and a car in the image, and the background is green grass."
    parsed = parse_dense_answer(text, ["dog", "car", "cat"])
    assert parsed.objects_found == ["dog", "car"]
    assert [text[a:b] for a, b in parsed.foreground] == ["dogs", "car"]
    assert [text[a:b] for a, b in parsed.background] == ["green", "grass"]


def test_normalize():
    assert normalize(" Golden-Retriever. ") == "golden retriever"


PAPER_PROMPT_1 = (
    "If you are doing an image classification task, what is the foreground and what is the "
    "background? The answer format is as follows: {'foreground':{}, 'background':{}}. Please "
    "choose the foreground word from the list below:"
)


def test_prompts_are_the_papers_and_plain_json():
    raw = json.loads(PROMPTS_FILE.read_text())
    assert set(raw) == {"prompt1", "prompt2", "prompt3", "dense"}
    prompts = load_prompts()
    question = question_text(prompts["prompt1"], ["goldfish", "tarantula"], ["goldfish"], "x")
    assert question == PAPER_PROMPT_1 + " goldfish, tarantula"
    forced = forced_answer_text(prompts["prompt1"], "goldfish", ["goldfish"])
    assert chat_text(question, forced) == (
        f"USER: <image>\n{question} ASSISTANT: {{'foreground': 'goldfish', 'background': '"
    )
    dense = question_text(prompts["dense"], [], ["dog", "car"], "[background]")
    assert dense == (
        "If you are doing an object detection task, please tell me if there is/are dog and car "
        "in this image. The answer format is as follows: Yes, there is/are dog and car in the "
        "image, and the background is [background]."
    )
    assert "{" not in forced_answer_text(prompts["dense"], "dog", ["dog", "car"])


def test_prompt3_cannot_be_forced():
    with pytest.raises(ValidationError, match="prompt3"):
        TeacherConfig(prompt="prompt3", answer_mode="forced-foreground")


@pytest.mark.parametrize(
    ("fmt", "forced", "generated", "closed"),
    [
        ("dict", True, "grass, sky", False),
        ("dict", True, "grass, sky'}", True),
        ("dict", False, "{'foreground':{goldfish}, 'backgr", False),  # nested braces
        ("dict", False, "{'foreground':{goldfish}, 'background':{water}}", True),
        ("dense", True, " green grass", False),
        ("dense", True, " green grass.", True),
        ("phrase", False, "Goldfish", False),
        ("description", False, "A fish\nin", True),
    ],
)
def test_answer_closed(fmt, forced, generated, closed):
    assert answer_closed(fmt, forced, generated) is closed
