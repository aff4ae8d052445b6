"""A batch of prepared items -> model inputs, and where each item's image and answer start.

Offsets come from the unexpanded text, where <image> is one token; the processor expands it to
the model's image tokens and pads on the left, so each item's positions shift by its padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from teacher.prompting.prepared import Prepared


@dataclass
class Encoded:
    inputs: dict[str, torch.Tensor]
    prompt_length: int  # padded length P
    pad: list[int]  # left padding of each item
    answer_start: list[int]  # padded position of each item's first answer token
    image_start: list[int]  # padded position of each item's first image token


def encode(
    processor, batch: list[Prepared], num_image_tokens: int, image_token_id: int,
    dtype: torch.dtype, device: torch.device,
) -> Encoded:  # fmt: skip
    tokenizer = processor.tokenizer
    inputs = processor(
        text=[p.text for p in batch],
        images=[p.view for p in batch],
        padding=True,
        return_tensors="pt",
        # The view is already the model's 336 x 336 input: no second resize or crop.
        do_resize=False,
        do_center_crop=False,
    )
    prompt_length = inputs["input_ids"].shape[1]
    pad, answer_start, image_start = [], [], []
    for b, prepared in enumerate(batch):
        tokens = tokenizer(prepared.text, return_offsets_mapping=True)
        length = len(tokens["input_ids"]) + num_image_tokens - 1
        if length != int(inputs["attention_mask"][b].sum()):
            raise RuntimeError(f"{prepared.item.key}: tokenizer and processor disagree")
        offsets = tokens["offset_mapping"]
        first_answer = next(
            (k for k, (s, e) in enumerate(offsets) if s >= prepared.head_chars and e > s),
            len(offsets),
        )
        pad.append(prompt_length - length)
        answer_start.append(pad[-1] + first_answer + num_image_tokens - 1)
        image_start.append(int((inputs["input_ids"][b] == image_token_id).nonzero()[0, 0]))
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return Encoded(inputs, prompt_length, pad, answer_start, image_start)
