"""Greedy decoding of the answer: when an answer is closed, and the arguments of `generate`.

Rows stop at the end of the value we parse (a closing quote or brace, a full stop), so the budget
(teacher.budget) is a ceiling, not the usual length; an answer still open when it runs out is
cut, and the caller marks it.
"""

from __future__ import annotations

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


class AnswerStop(StoppingCriteria):
    """Per-row stop once the answer is closed (the batch runs until all rows stop)."""

    def __init__(self, tokenizer, prompt_length: int, answer_format: str, forced: bool) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.answer_format = answer_format
        self.forced = forced

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.prompt_length :].tolist()
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        done = [answer_closed(self.answer_format, self.forced, text) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
        "stopping_criteria": [AnswerStop(tokenizer, prompt_length, answer_format, forced)],
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
