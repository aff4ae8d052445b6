"""The brute-force reference: eager attention, `output_attentions=True`, one image at a time.

Every layer's full attention of every step is materialized by `generate`, and the rows are
picked afterwards. It shares preparation, parsing and filtering with the fast path, so a
difference between the two can only come from the rows: the tests and bench/extract.py compare
them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from teacher.maps.word_maps import RowFn
from teacher.model import Teacher
from teacher.prompting.encoding import Encoded
from teacher.prompting.prepared import Prepared
from teacher.results import MapResult, TeacherInput


@contextmanager
def eager_attention(teacher: Teacher) -> Iterator[None]:
    teacher.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        teacher.use_rows_attention()


@torch.inference_mode()
def run_naive(teacher: Teacher, prepared: Prepared) -> tuple[Encoded, torch.Tensor, RowFn]:
    encoded = teacher.encode([prepared])
    out = teacher.model.generate(
        **teacher.generate_kwargs(encoded), output_attentions=True, return_dict_in_generate=True
    )
    prompt_length = encoded.prompt_length
    first_image = encoded.image_start[0]
    columns = slice(first_image, first_image + teacher.num_image_tokens)

    def row(item: int, position: int) -> torch.Tensor:
        # attentions[0]: prefill, [B, H, P, P] per layer; attentions[t]: step t, [B, H, 1, P + t]
        step, query = (
            (0, position) if position < prompt_length else (position - prompt_length + 1, 0)
        )
        per_layer = []
        for layer in teacher.layers:
            weights = out.attentions[step][layer][item, :, query].float()  # [H, K]
            if teacher.heads is not None:
                weights = weights[teacher.heads]
            per_layer.append(weights.mean(0)[columns])  # [I]
        return torch.stack(per_layer).mean(0)  # [I]

    return encoded, out.sequences, row


def extract_naive(teacher: Teacher, items: list[TeacherInput]) -> list[MapResult]:
    results = []
    with eager_attention(teacher):
        for item in items:
            prepared = teacher.prepare(item)
            encoded, sequences, row = run_naive(teacher, prepared)
            results.append(teacher.finish(prepared, 0, encoded, sequences[0], row))
    return results
