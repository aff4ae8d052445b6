"""The teacher's decode loop without host synchronisation, and the batch size from free memory.

References: `answer_closed` on the tokenizer's own decoding of the text (the on-device stop must
say the same at every step), host reads counted while the tiny teacher generates (a
TorchDispatchMode sees every `.item()`/`bool(tensor)`, and `Tensor.tolist` is counted by
wrapping it), and the KV cache's size counted by hand from the 7B's architecture.
"""

from __future__ import annotations

import itertools
import random
import threading

import pytest
import teacher_fixtures
import torch
from teacher_fixtures import make_teacher, sample_items
from transformers import AutoTokenizer

from bench.llava7b import llava_15_7b_config
from bench.teacher import reads_per_forward
from teacher.batching import auto_batch_size, kv_cache_bytes_per_token
from teacher.prompting.generation import MARKS, AnswerStop, answer_closed, mark_counts

tiny_dir_each_vocab = teacher_fixtures.tiny_dir_each_vocab
tiny_dir = teacher_fixtures.tiny_dir


@pytest.mark.parametrize(
    ("answer_format", "forced"),
    [("dict", True), ("dict", False), ("dense", True), ("phrase", False)],
)
def test_on_device_stop_equals_answer_closed_on_the_text(
    tiny_dir_each_vocab, answer_format: str, forced: bool
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir_each_vocab)
    counts = mark_counts(tokenizer)
    marked = [i for i in range(len(tokenizer)) if counts[i].any()]
    plain = [i for i in range(len(tokenizer)) if not counts[i].any()]
    assert {MARKS[j] for i in marked for j in range(len(MARKS)) if counts[i, j]} == set(MARKS)
    rng = random.Random(0)
    prompt = [plain[0]] * 3
    stop = AnswerStop(tokenizer, len(prompt), answer_format, forced)
    decided = []
    for _ in range(40):
        sequences = []
        for _ in range(6):  # a batch of rows, one mark in four tokens
            length = rng.randint(1, 8)
            row = [rng.choice(marked if rng.random() < 0.25 else plain) for _ in range(length)]
            sequences.append(prompt + row)
        width = max(len(s) for s in sequences)
        padded = [s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences]
        done = stop(torch.tensor(padded), None).tolist()
        texts = tokenizer.batch_decode([s[3:] for s in padded], skip_special_tokens=True)
        expected = [answer_closed(answer_format, forced, text) for text in texts]
        assert done == expected, texts
        decided += done
    assert any(decided) and not all(decided)  # both outcomes were exercised


def test_decode_steps_read_nothing_back_but_the_loop_condition(tiny_dir) -> None:
    """Between two decode forwards the host reads exactly one value: transformers' own
    `unfinished_sequences.max() == 0` loop condition. Neither the row capture, the stopping
    criterion nor the mask reads anything (before: the criterion decoded the text every step
    and SDPA's mask asked whether the batch had padding)."""
    teacher = make_teacher(tiny_dir, batch_size=3)
    per_forward, _ = reads_per_forward(teacher, sample_items())  # (query length, reads so far)
    decode = [count for length, count in per_forward if length == 1]
    assert per_forward[0][0] > 1 and len(decode) >= 2, per_forward  # a prefill, then steps
    between = [b - a for a, b in itertools.pairwise(decode)]
    assert between == [1] * len(between), per_forward


def test_kv_cache_per_token_of_the_7b_is_counted_by_hand() -> None:
    config = llava_15_7b_config(32000, 32001, layers=None)
    # K and V, 32 layers, 32 key-value heads of 128, fp16: 512 KiB per token.
    assert kv_cache_bytes_per_token(config.text_config, torch.float16) == 2 * 32 * 32 * 128 * 2
    per_image = 2 * 32 * 32 * 128 * 2 * (669 + 12)
    free = 100 * 2**30
    size = auto_batch_size(config.text_config, torch.float16, 669 + 12, free)
    # 90 % of the free memory over 1.5 x the cache per image (GPU.md: peak 1.19 x the cache).
    assert size == int(0.9 * free // (1.5 * per_image))
    assert auto_batch_size(config.text_config, torch.float16, 669 + 12, 2**20) == 1
    assert auto_batch_size(config.text_config, torch.float16, 10, 10**15) == 256  # the cap


def test_auto_batch_is_8_on_a_cpu_and_halves_after_out_of_memory(monkeypatch, tiny_dir) -> None:
    teacher = make_teacher(tiny_dir)  # batch_size "auto"
    assert teacher.cfg.batch_size == "auto"
    items = sample_items() * 3  # 9 items
    assert teacher.batch_size_for(items) == 8
    reference = make_teacher(tiny_dir, batch_size=9).extract(items)

    sizes: list[int] = []
    run_fast = teacher.run_fast

    def failing_above_two(batch, encoded=None):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return run_fast(batch, encoded)

    monkeypatch.setattr(teacher, "run_fast", failing_above_two)
    monkeypatch.setattr(teacher, "batch_size_for", lambda items: 8)
    results = teacher.extract(items)
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {1, 2}
    assert [r.key for r in results] == [r.key for r in reference]
    for got, want in zip(results, reference, strict=True):
        assert got.answer == want.answer
        assert float(abs(got.c_vlm - want.c_vlm).max()) < 1e-5


def test_the_next_batch_is_built_while_the_model_runs(monkeypatch, tiny_dir) -> None:
    """The first batch's generation waits until the second batch's inputs exist, which only
    an input thread working during generation can give; the maps are those of one image at a
    time."""
    teacher = make_teacher(tiny_dir, batch_size=2)
    items = sample_items()  # 3 items: batches of 2 and 1
    reference = make_teacher(tiny_dir, batch_size=1).extract(items)
    second_built = threading.Event()
    built: list[str] = []
    prepared_batch, run_fast = teacher.prepared_batch, teacher.run_fast

    def recording_prepared_batch(chosen):
        out = prepared_batch(chosen)
        built.append(threading.current_thread().name)
        if len(built) == 2:
            second_built.set()
        return out

    def run_fast_once_the_next_exists(batch, encoded=None):
        assert second_built.wait(timeout=120), "the next batch was not built during this one"
        return run_fast(batch, encoded)

    monkeypatch.setattr(teacher, "prepared_batch", recording_prepared_batch)
    monkeypatch.setattr(teacher, "run_fast", run_fast_once_the_next_exists)
    results = teacher.extract(items)
    assert len(built) == 2 and all(name.startswith("teacher-inputs") for name in built)
    for got, want in zip(results, reference, strict=True):
        assert got.key == want.key and got.answer == want.answer
        assert float(abs(got.c_vlm - want.c_vlm).max()) < 1e-5


def test_free_memory_counts_what_the_caching_allocator_holds_unused(monkeypatch) -> None:
    from teacher import batching

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 30 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 20 * 2**30)
    assert batching.free_memory(torch.device("cuda", 0)) == 20 * 2**30
    assert batching.free_memory(torch.device("cpu")) is None


def test_auto_batch_on_a_gpu_follows_the_free_memory(monkeypatch, tiny_dir) -> None:
    teacher = make_teacher(tiny_dir)
    items = sample_items()
    tokens = max(teacher.prompt_tokens(items)) + teacher.max_new_tokens
    text = teacher.model.config.text_config
    per_image = 1.5 * kv_cache_bytes_per_token(text, torch.float32) * tokens
    monkeypatch.setattr("teacher.model.free_memory", lambda device: int(40 * per_image))
    assert teacher.batch_size_for(items) == 36  # 0.9 x 40
    monkeypatch.setattr("teacher.model.free_memory", lambda device: 1)
    assert teacher.batch_size_for(items) == 1
    assert make_teacher(tiny_dir, batch_size=5).batch_size_for(items) == 5  # as configured
