"""Greedy decoding of the answer: when an answer is closed, and the arguments of `generate`.

Rows stop at the end of the value we parse (a closing quote or brace, a full stop), so the budget
(teacher.prompting.budget) is a ceiling, not the usual length; an answer still open when it runs out is
cut, and the caller marks it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import StoppingCriteria


def answer_closed(answer_format: str, forced: bool, generated: str) -> bool:
    """Whether the generated text already holds the whole value we parse (stop decoding)."""
    if "\n" in generated:
        return True
    if answer_format == "dict":
        if forced:  # the model writes inside the background value's opening quote
            return any(mark in generated for mark in ("'", '"', "}"))
        # Free answers may nest braces ({'foreground':{goldfish}, ...}): wait for balance.
        opened, closed = generated.count("{"), generated.count("}")
        return closed > 0 and closed >= opened
    if answer_format == "dense":
        return "." in generated
    return False  # phrase / description: until the end token or max_new_tokens


# The characters `answer_closed` looks for. Each is one ASCII byte, so it is in a decoded text
# exactly as often as in the decoded tokens taken one by one (a multi-byte character never holds
# an ASCII byte, and skipped special tokens hold nothing): counting them per token is exact.
MARKS = ("\n", "'", '"', "}", "{", ".")


@functools.lru_cache(maxsize=8)
def mark_counts(tokenizer) -> torch.Tensor:
    """[V + 1, len(MARKS)] int32: how often each mark is in each token's text (skipping special
    tokens, as the answer's decoding does); the last row, all zeros, stands for ids the
    tokenizer does not know (a random-weight model may emit them)."""
    size = len(tokenizer)
    counts = torch.zeros(size + 1, len(MARKS), dtype=torch.int32)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=True)
    for i, text in enumerate(texts):
        if any(mark in text for mark in MARKS):
            counts[i] = torch.tensor([text.count(mark) for mark in MARKS])
    return counts


class AnswerStop(StoppingCriteria):
    """Per-row stop once the answer is closed (the batch runs until all rows stop).

    Decided on the device from per-token mark counts (`mark_counts`), so the decode loop never
    waits for the GPU to read the text back; it equals `answer_closed` on the decoded text.
    """

    def __init__(
        self, tokenizer, prompt_length: int, answer_format: str, forced: bool, device=None
    ) -> None:
        self.prompt_length = prompt_length
        self.answer_format = answer_format
        self.forced = forced
        self.counts = mark_counts(tokenizer).to(device)  # once per batch, before the loop
        self.unknown = self.counts.shape[0] - 1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]  # [B, T]
        ids = generated.clamp(max=self.unknown).masked_fill(generated < 0, self.unknown)
        marks = self.counts.to(ids.device)[ids].sum(dim=1)  # [B, len(MARKS)]
        newline, single, double, close, open_, period = marks.unbind(1)
        done = newline > 0
        if self.answer_format == "dict":
            if self.forced:  # the model writes inside the background value's opening quote
                done = done | (single > 0) | (double > 0) | (close > 0)
            else:  # free answers may nest braces: wait for balance
                done = done | ((close > 0) & (close >= open_))
        elif self.answer_format == "dense":
            done = done | (period > 0)
        return done


def greedy_kwargs(
    inputs: dict[str, torch.Tensor],
    tokenizer,
    prompt_length: int,
    max_new_tokens: int,
    answer_format: str,
    forced: bool,
) -> dict[str, Any]:
    """`model.generate` arguments: greedy, one beam, stopping each row at its closed answer."""
    return {
        **inputs,
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": tokenizer.pad_token_id,
        "stopping_criteria": [
            AnswerStop(tokenizer, prompt_length, answer_format, forced, inputs["input_ids"].device)
        ],
    }


def answer_ids(
    sequence: list[int], answer_start: int, prompt_length: int, ends: set[int]
) -> list[int]:
    """Forced prefix + generated tokens, cut at the first end/pad token."""
    generated = sequence[prompt_length:]
    cut = next((k for k, t in enumerate(generated) if t in ends), len(generated))
    return sequence[answer_start:prompt_length] + generated[:cut]


def cut_by_budget(
    sequence: list[int], prompt_length: int, max_new_tokens: int, ends: set[int], tokenizer,
    answer_format: str, forced: bool,
) -> bool:  # fmt: skip
    """The model was still writing when max_new_tokens ran out (no end, answer not closed).
    Rows that finished earlier in a batch were padded, so they are never cut."""
    generated = sequence[prompt_length:]
    if len(generated) < max_new_tokens or ends.intersection(generated):
        return False
    text = tokenizer.decode(generated, skip_special_tokens=True)
    return not answer_closed(answer_format, forced, text)
