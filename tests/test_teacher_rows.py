"""The fast path's maps equal brute-force eager attention (docs/maps.md), in every answer mode.

References used here: teacher.naive (eager `generate(output_attentions=True)`, one image at a
time, rows picked afterwards), and an eager forward over the audit's token ids with the map
recomputed in this file from the audit's positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import teacher_fixtures
import torch
from teacher_fixtures import make_teacher, noise_image, sample_items, script_answers

from teacher import MapResult, TeacherInput
from teacher.naive import eager_attention, extract_naive

tiny_dir_each_vocab = teacher_fixtures.tiny_dir_each_vocab  # both tiny teachers, built once


@pytest.fixture
def tiny_dir(tiny_dir_each_vocab):
    """Every test here runs on both tokenizers: byte-level BPE and the real Llama-2 one."""
    return tiny_dir_each_vocab


TOL = 1e-4  # the bound on maps
# Raw maps are ~1/576 per cell, so 1e-4 absolute alone would hide a wrong softmax
# normalizer; fp32 SDPA vs eager agree to ~1e-7 of the map's scale.
SCALED_TOL = 1e-4


def assert_same_maps(fast: list[MapResult], naive: list[MapResult]) -> None:
    assert [r.key for r in fast] == [r.key for r in naive]
    for f, n in zip(fast, naive, strict=True):
        assert f.answer == n.answer, f.key
        assert (f.valid, f.reason, f.fg_correct) == (n.valid, n.reason, n.fg_correct)
        for name in ("c_fore", "c_back", "c_vlm"):
            np.testing.assert_allclose(getattr(f, name), getattr(n, name), atol=TOL, err_msg=name)
        for name in ("c_fore", "c_back"):
            scale = max(float(np.abs(getattr(n, name)).max()), 1e-12)
            diff = float(np.abs(getattr(f, name) - getattr(n, name)).max())
            assert diff <= SCALED_TOL * scale, (f.key, name, diff, scale)


def assert_scaled(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, atol=TOL)
    scale = max(float(np.abs(expected).max()), 1e-12)
    assert float(np.abs(actual - expected).max()) <= SCALED_TOL * scale


def recompute_from_audit(teacher, item: TeacherInput, result: MapResult) -> tuple:
    """C_fore and C_back from one eager forward over the audited ids, by the row rule p -> p-1."""
    audit = result.audit
    view = teacher.prepare(item).view
    pixels = teacher.processor.image_processor(
        view, do_resize=False, do_center_crop=False, return_tensors="pt"
    )["pixel_values"]
    ids = torch.tensor([audit["input_ids"]])
    with eager_attention(teacher), torch.no_grad():
        out = teacher.model(input_ids=ids, pixel_values=pixels, output_attentions=True)
    first, last = audit["image_positions"]
    assert (ids[0, first : last + 1] == teacher.image_token_id).all()
    assert last - first + 1 == 576

    def word(positions: list[int]) -> np.ndarray:
        rows = [
            out.attentions[layer][0, :, p - 1, first : last + 1].mean(0)
            for layer in audit["layers"]
            for p in positions
        ]
        return torch.stack(rows).mean(0).reshape(24, 24).numpy()

    fore = [word(ps) for ps in audit["fore_positions"]]
    back = [word(ps) for ps in audit["back_positions"]]
    c_back = np.mean(back, axis=0) if back else np.zeros((24, 24))
    return fore, c_back


def audited_words(teacher, result: MapResult, key: str) -> list[str]:
    """Decode the audited token positions back to text: an independent check that the rows
    picked are the words' own tokens (fast and naive share the word-to-token mapping)."""
    ids = result.audit["input_ids"]
    return [teacher.tokenizer.decode([ids[p] for p in ps]).strip() for ps in result.audit[key]]


def test_forced_foreground_equals_eager_reference(tiny_dir):
    teacher = make_teacher(tiny_dir, audit=True, batch_size=3)
    items = sample_items()
    fast = teacher.extract(items)
    assert_same_maps(fast, extract_naive(teacher, items))
    for item, result in zip(items, fast, strict=True):
        assert result.valid and result.fg_correct == -1
        assert f"'foreground': '{item.class_name}'" in result.answer
        assert np.isclose(result.c_vlm.sum(), 1.0, atol=1e-5) and (result.c_vlm >= 0).all()
        assert audited_words(teacher, result, "fore_positions") == [item.class_name]
        fore, c_back = recompute_from_audit(teacher, item, result)
        assert_scaled(result.c_fore, fore[0])
        assert_scaled(result.c_back, c_back)
    # "golden retriever" is several tokens: the multi-token word path is exercised.
    assert len(fast[1].audit["fore_positions"][0]) >= 2


def test_generate_mode_equals_eager_reference(tiny_dir):
    teacher = make_teacher(tiny_dir, answer_mode="generate", audit=True, batch_size=3)
    # The random model cannot answer; it is made to write this through ordinary decode steps,
    # so the foreground AND background rows are decode-step rows.
    script_answers(teacher, " {'foreground': 'golden retriever', 'background': 'grass, sky'}")
    items = sample_items()
    fast = teacher.extract(items)
    assert_same_maps(fast, extract_naive(teacher, items))
    assert [r.fg_correct for r in fast] == [0, 1, 0]  # only item b's label is golden retriever
    for item, result in zip(items, fast, strict=True):
        assert result.valid
        assert audited_words(teacher, result, "back_positions") == ["grass", "sky"]  # no comma
        assert audited_words(teacher, result, "fore_positions") == ["golden retriever"]
        fore, c_back = recompute_from_audit(teacher, item, result)
        assert_scaled(result.c_fore, fore[0])
        assert_scaled(result.c_back, c_back)


def test_batched_equals_one_at_a_time(tiny_dir):
    items = sample_items()
    batched = make_teacher(tiny_dir, batch_size=3).extract(items)
    single = make_teacher(tiny_dir, batch_size=1).extract(items)
    assert_same_maps(batched, single)


def test_layer_and_head_selection_equal_eager(tiny_dir):
    teacher = make_teacher(tiny_dir, layers=[-1], heads=[0, 3], audit=True, batch_size=2)
    items = sample_items()[:2]
    fast = teacher.extract(items)
    assert_same_maps(fast, extract_naive(teacher, items))
    assert fast[0].audit["layers"] == [2] and teacher.spec()["selection"]["heads"] == [0, 3]
    everything = make_teacher(tiny_dir, batch_size=2).extract(items)
    assert not np.allclose(fast[0].c_fore, everything[0].c_fore, atol=1e-6)


def test_dense_prompt_sums_object_words(tiny_dir):
    teacher = make_teacher(tiny_dir, prompt="dense", audit=True, batch_size=2)
    items = [
        TeacherInput("d", noise_image(60, 40, 3), [(1, 1, 20, 20), (30, 5, 55, 35)], "dog", 0,
                     object_names=["dog", "car"]),
        TeacherInput("e", noise_image(40, 60, 4), [(4, 4, 30, 50)], "circle", 1),
    ]  # fmt: skip
    fast = teacher.extract(items)
    assert_same_maps(fast, extract_naive(teacher, items))
    # (the Llama decoder drops the answer's leading space, byte-level BPE keeps it)
    assert fast[0].answer.lstrip().startswith("Yes, there are dog and car in the image")
    for item, result in zip(items, fast, strict=True):
        fore, c_back = recompute_from_audit(teacher, item, result)
        assert len(fore) == len(item.object_names or [item.class_name])  # one per target class
        assert_scaled(result.c_fore, np.sum(fore, axis=0))
        assert_scaled(result.c_back, c_back)


@pytest.mark.parametrize(
    ("prompt", "mode", "answer"),
    [("prompt2", "forced-foreground", None), ("prompt3", "generate", " A small red circle.")],
)
def test_other_prompts_equal_eager(tiny_dir, prompt, mode, answer):
    teacher = make_teacher(tiny_dir, prompt=prompt, answer_mode=mode, batch_size=2)
    if answer:
        script_answers(teacher, answer)
    items = sample_items()[:2]
    fast = teacher.extract(items)
    assert_same_maps(fast, extract_naive(teacher, items))
    assert all(r.valid for r in fast)


def test_same_inputs_same_maps(tiny_dir):
    items = sample_items()
    first = make_teacher(tiny_dir).extract(items)
    second = make_teacher(tiny_dir).extract(items)
    for a, b in zip(first, second, strict=True):
        assert a.answer == b.answer
        assert np.array_equal(a.c_vlm, b.c_vlm)


def test_non_finite_rows_are_invalid_not_nan(tiny_dir):
    teacher = make_teacher(tiny_dir)
    run_fast = teacher.run_fast

    def overflowing(batch, encoded=None):  # what an fp16 overflow in the teacher hands over
        encoded, sequences, row = run_fast(batch, encoded)
        return encoded, sequences, lambda b, p: row(b, p) * float("nan")

    teacher.run_fast = overflowing  # type: ignore[method-assign]
    (result,) = teacher.extract(sample_items()[:1])
    assert not result.valid and "non-finite" in result.reason
    for name in ("c_vlm", "c_fore", "c_back"):
        assert np.array_equal(getattr(result, name), np.zeros((24, 24)))


def test_byte_fallback_and_non_ascii_words_keep_their_rows(tiny_dir):
    """An emoji falls back to 4 byte tokens; the words after it still get their own rows, and
    'café' and 'dog’s' are one word each."""
    teacher = make_teacher(tiny_dir, answer_mode="generate", audit=True, batch_size=2)
    script_answers(
        teacher, " {'foreground': 'golden retriever', 'background': '😀 café, dog’s bowl'}"
    )
    items = sample_items()[:2]
    fast = teacher.extract(items)
    assert_same_maps(fast, extract_naive(teacher, items))
    for item, result in zip(items, fast, strict=True):
        assert result.valid, result.reason
        assert audited_words(teacher, result, "fore_positions") == ["golden retriever"]
        assert audited_words(teacher, result, "back_positions") == ["café", "dog’s", "bowl"]
        fore, c_back = recompute_from_audit(teacher, item, result)
        assert_scaled(result.c_fore, fore[0])
        assert_scaled(result.c_back, c_back)


def test_generate_budget_fits_the_longest_name_and_a_cut_answer_is_invalid(tiny_dir):
    teacher = make_teacher(tiny_dir, answer_mode="generate", batch_size=2)
    items = sample_items()[:2]
    whole = " {'foreground': 'golden retriever', 'background': 'green grass, blue sky, trees'}"
    script_answers(teacher, whole)
    assert all(r.valid and r.answer.strip() == whole.strip() for r in teacher.extract(items))

    teacher = make_teacher(tiny_dir, answer_mode="generate", batch_size=2)
    script_answers(teacher, " {'foreground': 'golden retriever', 'background': '" + "grass, " * 40)
    fast = teacher.extract(items)
    assert_same_maps(fast, extract_naive(teacher, items))
    for result in fast:
        assert not result.valid and "cut by the token budget" in result.reason
        assert np.array_equal(result.c_vlm, np.zeros((24, 24)))
    written = teacher.tokenizer(fast[0].answer, add_special_tokens=False)["input_ids"]
    assert len(written) <= teacher.max_new_tokens + 2  # the budget, give or take a re-merge


def test_prompt_longer_than_the_context_fails_before_any_image(tiny_dir):
    from teacher import TeacherConfig, describe_teacher
    from teacher.prompting.budget import PromptTooLongError

    huge = [f"category number {i} of a very large vocabulary" for i in range(1500)]
    config = TeacherConfig(model=str(tiny_dir), quant="none", dtype="float32", device="cpu")
    with pytest.raises(PromptTooLongError, match=r"max_position_embeddings.*shorter class"):
        describe_teacher(config, huge)
