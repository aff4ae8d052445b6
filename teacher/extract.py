"""Interaction extraction: images + boxes + prompt -> C_fore, C_back, C_VLM (DESIGN 4).

Per batch: build each teacher view (boxes drawn at 336 px), encode the chat text with the forced
answer prefix, generate greedily while teacher.capture keeps only the attention rows of the
answer's tokens, then parse the answer and average the rows of its words.

Row rule: the token at position p was produced by the query at p - 1, so a word spanning answer
tokens [s, e) uses rows s-1 .. e-2. A word's map is the mean of its rows, heads and selected
layers over the image columns; C_back is the mean of the background words' maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    StoppingCriteria,
)

from pipeline.geometry import Box, MapGeometry, ViewGeometry
from teacher.answers import (
    ParsedAnswer,
    normalize,
    parse_dense_answer,
    parse_description_answer,
    parse_dict_answer,
    parse_phrase_answer,
)
from teacher.budget import answer_budget, check_context, longest_name
from teacher.capture import ROWS_ATTENTION, RowCapture, capturing
from teacher.config import TeacherConfig
from teacher.filters import eq11, eq12
from teacher.numerics import NON_FINITE_REASON
from teacher.prompts import CHAT_FORM, PROMPTS, chat_text, forced_answer_text, question_text
from teacher.spans import Span, decode_with_spans, tokens_of
from teacher.view import teacher_view

SPEC_FORMAT = 1
RowFn = Callable[[int, int], torch.Tensor]  # (item in batch, padded query position) -> [I]


@dataclass
class TeacherInput:
    key: str
    image: Image.Image  # RGB, original size
    boxes: list[Box]  # original pixels
    class_name: str
    label: int
    object_names: list[str] | None = None  # dense prompt: classes present (default [class_name])


@dataclass
class MapResult:
    key: str
    c_vlm: np.ndarray  # float32 [G, G], sums to 1 when valid, zeros when not
    c_fore: np.ndarray  # float32 [G, G] (dense: sum of the object words' maps)
    c_back: np.ndarray  # float32 [G, G]
    valid: bool
    reason: str  # "" when valid
    answer: str
    fg_correct: int  # 1 / 0, or -1 when unknown (forced answers choose no foreground)
    audit: dict | None


@dataclass
class Prepared:
    item: TeacherInput
    view: Image.Image
    geometry: ViewGeometry
    text: str
    head_chars: int  # length of the text before the answer
    objects: list[str] = field(default_factory=list)


@dataclass
class Encoded:
    inputs: dict[str, torch.Tensor]
    prompt_length: int  # padded length P
    pad: list[int]  # left padding of each item
    answer_start: list[int]  # padded position of each item's first answer token
    image_start: list[int]  # padded position of each item's first image token


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


class Teacher:
    """A loaded LLaVA-1.5 that turns TeacherInputs into MapResults (see load_teacher)."""

    def __init__(
        self,
        cfg: TeacherConfig,
        model: LlavaForConditionalGeneration | None,
        processor: LlavaProcessor,
        vocabulary: list[str],
        weights: dict,
        config: LlavaConfig | None = None,
    ) -> None:
        """`model=None` (with `config`) describes a teacher without its weights: enough for
        spec(), grid and geometry_spec(), which is all a cache lookup needs."""
        if model is None and config is None:
            raise ValueError("Teacher needs a model or, to only describe it, its config")
        config = config if config is not None else model.config
        self.cfg = cfg
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.vocabulary = list(vocabulary)
        self.weights = weights
        self.template = PROMPTS[cfg.prompt]
        self.image_size = int(processor.image_processor.crop_size["height"])
        self.num_image_tokens = int(config.image_seq_length)
        self.image_token_id = int(config.image_token_id)
        num_layers = config.text_config.num_hidden_layers
        if cfg.layers and any(not -num_layers <= i < num_layers for i in cfg.layers):
            raise ValueError(f"TeacherConfig.layers {cfg.layers}: the model has {num_layers}")
        # Negative indices count from the last layer, as in Python.
        self.layers = sorted({i % num_layers for i in (cfg.layers or range(num_layers))})
        num_heads = config.text_config.num_attention_heads
        if cfg.heads and any(not 0 <= h < num_heads for h in cfg.heads):
            raise ValueError(f"TeacherConfig.heads {cfg.heads}: the model has {num_heads} heads")
        self.heads = sorted(set(cfg.heads)) if cfg.heads else None
        self.max_positions = int(config.text_config.max_position_embeddings)
        self.max_new_tokens = cfg.max_new_tokens or answer_budget(
            self.tokenizer, self.template, self.vocabulary, self.forced
        )
        # The longest class name makes the longest prompt: fail before any image, not mid-run.
        name = longest_name(self.tokenizer, self.vocabulary)
        longest = self.prompt(TeacherInput("", None, [], name, 0))[0]  # type: ignore[arg-type]
        check_context(
            len(self.tokenizer(longest)["input_ids"]), self.num_image_tokens,
            self.max_new_tokens, self.max_positions, f"prompt for class {name!r}",
        )  # fmt: skip

    @property
    def grid(self) -> int:
        return round(self.num_image_tokens**0.5)  # 24 for LLaVA-1.5

    @property
    def forced(self) -> bool:
        return self.cfg.answer_mode == "forced-foreground"

    def spec(self) -> dict:
        """Everything that changes a map, JSON-able (the map cache hashes it)."""
        cfg = self.cfg
        return {
            "format": SPEC_FORMAT,
            "weights": self.weights,
            "quant": cfg.quant,
            "dtype": cfg.dtype,
            "chat_form": CHAT_FORM,
            "prompt": {"name": cfg.prompt, **self.template.model_dump()},
            "vocabulary": self.vocabulary if "{vocabulary}" in self.template.question else None,
            "dense_background_hint": cfg.dense_background_hint if cfg.prompt == "dense" else None,
            "answer_mode": cfg.answer_mode,
            "max_new_tokens": self.max_new_tokens,
            "visual_prompt": {
                "box_color": list(cfg.box_color),
                "box_width": cfg.box_width,
                "view": cfg.view,
                "pad_color": list(cfg.pad_color),
                "size": self.image_size,
            },
            "selection": {
                "layers": self.layers,
                "heads": self.heads,
                "rows": "query p-1 for each answer token p of a word; word = mean of its rows; "
                "background = mean of its words; punctuation and joining words skipped",
            },
            "filter": "eq12" if cfg.prompt == "dense" else "eq11",
            "grid": self.grid,
        }

    def geometry_spec(self) -> MapGeometry:
        """The view geometry shared by every map (per-image scale follows from the image size)."""
        return MapGeometry(mode=self.cfg.view, size=self.image_size, grid=self.grid)

    # ---- preparation -------------------------------------------------------------------------

    def prompt(self, item: TeacherInput) -> tuple[str, int, list[str]]:
        """(full chat text, characters before the answer, target objects) of one item."""
        objects = list(item.object_names or [item.class_name])
        question = question_text(
            self.template, self.vocabulary, objects, self.cfg.dense_background_hint
        )
        forced = forced_answer_text(self.template, item.class_name, objects) if self.forced else ""
        return chat_text(question, forced), len(chat_text(question, "")), objects

    def prepare(self, item: TeacherInput) -> Prepared:
        cfg = self.cfg
        for box in item.boxes:
            if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(
                    f"{item.key}: box {list(box)} is not [x0, y0, x1, y1], x1>x0, y1>y0"
                )
        view, geometry = teacher_view(
            item.image, item.boxes, self.image_size, cfg.view,
            cfg.pad_color, cfg.box_color, cfg.box_width,
        )  # fmt: skip
        text, head_chars, objects = self.prompt(item)
        return Prepared(item, view, geometry, text, head_chars, objects)

    def length_order(self, items: list[TeacherInput]) -> list[int]:
        """Item indices sorted (stably) by prompt length: batches of equal length need no
        padding mask, so SDPA keeps its causal kernel, and mixed batches pad less."""
        lengths: dict[str, int] = {}
        for item in items:
            text = self.prompt(item)[0]
            if text not in lengths:  # prompts repeat per class: tokenize each once
                lengths[text] = len(self.tokenizer(text)["input_ids"])
                check_context(
                    lengths[text], self.num_image_tokens, self.max_new_tokens,
                    self.max_positions, f"{item.key}'s prompt",
                )  # fmt: skip
        return sorted(range(len(items)), key=lambda i: lengths[self.prompt(items[i])[0]])

    def encode(self, batch: list[Prepared]) -> Encoded:
        inputs = self.processor(
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
            # Offsets come from the unexpanded text, where <image> is one token.
            tokens = self.tokenizer(prepared.text, return_offsets_mapping=True)
            length = len(tokens["input_ids"]) + self.num_image_tokens - 1
            if length != int(inputs["attention_mask"][b].sum()):
                raise RuntimeError(f"{prepared.item.key}: tokenizer and processor disagree")
            offsets = tokens["offset_mapping"]
            first_answer = next(
                (k for k, (s, e) in enumerate(offsets) if s >= prepared.head_chars and e > s),
                len(offsets),
            )
            pad.append(prompt_length - length)
            answer_start.append(pad[-1] + first_answer + self.num_image_tokens - 1)
            image_start.append(int((inputs["input_ids"][b] == self.image_token_id).nonzero()[0, 0]))
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        return Encoded(inputs, prompt_length, pad, answer_start, image_start)

    def generate_kwargs(self, encoded: Encoded) -> dict:
        return {
            **encoded.inputs,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "pad_token_id": self.tokenizer.pad_token_id,
            "stopping_criteria": [
                AnswerStop(
                    self.tokenizer, encoded.prompt_length, self.template.answer_format, self.forced
                )
            ],
        }

    # ---- fast path ---------------------------------------------------------------------------

    @torch.inference_mode()
    def run_fast(self, batch: list[Prepared]) -> tuple[Encoded, torch.Tensor, RowFn]:
        encoded = self.encode(batch)
        requested = [
            list(range(start - 1, encoded.prompt_length)) for start in encoded.answer_start
        ]
        width = max(len(rows) for rows in requested)
        prefill_rows = torch.tensor([rows + rows[-1:] * (width - len(rows)) for rows in requested])
        capture = RowCapture(
            prefill_rows=prefill_rows,  # [B, R]
            image_start=torch.tensor(encoded.image_start),  # [B]
            num_image_tokens=self.num_image_tokens,
            prompt_length=encoded.prompt_length,
            layers=self.layers,
            heads=self.heads,
        )
        with capturing(capture):
            sequences = self.model.generate(**self.generate_kwargs(encoded))
        return encoded, sequences, capture.row

    def extract(self, items: list[TeacherInput]) -> list[MapResult]:
        """MapResults in the order of `items` (batches are formed by prompt length)."""
        results: list[MapResult | None] = [None] * len(items)
        order = self.length_order(items)
        for start in range(0, len(order), self.cfg.batch_size):
            chosen = order[start : start + self.cfg.batch_size]
            batch = [self.prepare(items[i]) for i in chosen]
            encoded, sequences, row = self.run_fast(batch)
            for b, (i, prepared) in enumerate(zip(chosen, batch, strict=True)):
                results[i] = self.finish(prepared, b, encoded, sequences[b], row)
        return results  # type: ignore[return-value]

    # ---- from rows to maps -------------------------------------------------------------------

    def parse(self, text: str, prepared: Prepared) -> ParsedAnswer:
        fmt = self.template.answer_format
        if fmt == "dict":
            return parse_dict_answer(text, expected_foreground=prepared.item.class_name)
        if fmt == "phrase":
            return parse_phrase_answer(text)
        if fmt == "description":
            return parse_description_answer(text)
        return parse_dense_answer(text, prepared.objects)

    def fg_correct(self, parsed: ParsedAnswer, text: str, prepared: Prepared) -> int:
        if self.forced:
            return -1  # the foreground was written for the model
        fmt = self.template.answer_format
        if fmt == "dense":
            return int(set(parsed.objects_found) == set(prepared.objects))
        if fmt == "description":
            return int(normalize(prepared.item.class_name) in normalize(text))
        return int(normalize(parsed.foreground_text or "") == normalize(prepared.item.class_name))

    def answer_ids(self, b: int, encoded: Encoded, sequence: torch.Tensor) -> list[int]:
        """Forced prefix + generated tokens, cut at the first end/pad token."""
        ids = sequence.tolist()
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        generated = ids[encoded.prompt_length :]
        cut = next((k for k, t in enumerate(generated) if t in ends), len(generated))
        return ids[encoded.answer_start[b] : encoded.prompt_length] + generated[:cut]

    def cut_by_budget(self, encoded: Encoded, sequence: torch.Tensor) -> bool:
        """The model was still writing when max_new_tokens ran out (no end, answer not closed).
        Rows that finished earlier in a batch were padded, so they are never cut."""
        generated = sequence.tolist()[encoded.prompt_length :]
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        if len(generated) < self.max_new_tokens or ends.intersection(generated):
            return False
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return not answer_closed(self.template.answer_format, self.forced, text)

    def finish(
        self, prepared: Prepared, b: int, encoded: Encoded, sequence: torch.Tensor, row: RowFn
    ) -> MapResult:
        grid = self.grid
        answer_ids = self.answer_ids(b, encoded, sequence)
        text, token_spans = decode_with_spans(self.tokenizer, answer_ids)
        parsed = self.parse(text, prepared)
        start = encoded.answer_start[b]
        cut = self.cut_by_budget(encoded, sequence)
        if cut and self.forced:
            # The forced words are whole; only the model's last background word may be cut.
            parsed.background = parsed.background[:-1]

        def word_map(span: Span) -> tuple[np.ndarray, list[int]]:
            positions = [start + k for k in tokens_of(span, token_spans)]
            rows = torch.stack([row(b, p - 1) for p in positions])  # [rows, I]
            return rows.mean(0).reshape(grid, grid).cpu().numpy(), positions

        fore = [word_map(span) for span in parsed.foreground if tokens_of(span, token_spans)]
        back = [word_map(span) for span in parsed.background if tokens_of(span, token_spans)]
        zeros = np.zeros((grid, grid), np.float32)
        c_back = np.mean([m for m, _ in back], axis=0).astype(np.float32) if back else zeros
        if cut and not self.forced:
            c_fore, c_back, c_vlm, valid = zeros, zeros, zeros, False
            reason = f"answer cut by the token budget ({self.max_new_tokens} new tokens): {text!r}"
        elif not fore:
            c_fore, c_vlm, valid = zeros, zeros, False
            reason = f"answer has no foreground word: {text!r}"
        elif self.template.answer_format == "dense":
            c_fore = np.sum([m for m, _ in fore], axis=0).astype(np.float32)
            c_vlm, valid, reason = eq12([m for m, _ in fore], c_back)
        else:
            c_fore = np.mean([m for m, _ in fore], axis=0).astype(np.float32)
            c_vlm, valid, reason = eq11(c_fore, c_back)
        if not (np.isfinite(c_fore).all() and np.isfinite(c_back).all()):
            # fp16 overflow upstream: keep the row, but never let a NaN reach the cache.
            c_fore, c_back, c_vlm, valid = zeros, zeros, zeros, False
            reason = NON_FINITE_REASON
        audit = None
        if self.cfg.audit:
            pad = encoded.pad[b]
            audit = {
                "input_ids": sequence.tolist()[pad : start + len(answer_ids)],
                "fore_positions": [[p - pad for p in ps] for _, ps in fore],
                "back_positions": [[p - pad for p in ps] for _, ps in back],
                "image_positions": [
                    encoded.image_start[b] - pad,
                    encoded.image_start[b] - pad + self.num_image_tokens - 1,
                ],
                "layers": self.layers,
                "heads": self.heads,
                "rule": "row of token position p is query p-1; word = mean of its rows, "
                "heads and layers over image columns; c_back = mean of back words",
            }
        return MapResult(
            key=prepared.item.key,
            c_vlm=c_vlm,
            c_fore=c_fore,
            c_back=c_back,
            valid=valid,
            reason=reason,
            answer=text,
            fg_correct=self.fg_correct(parsed, text, prepared),
            audit=audit,
        )

    def use_rows_attention(self) -> None:
        self.model.set_attn_implementation({"text_config": ROWS_ATTENTION, "vision_config": "sdpa"})
