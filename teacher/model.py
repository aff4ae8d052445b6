"""The running teacher: a loaded LLaVA-1.5 that turns TeacherInputs into MapResults (docs/maps.md).

Per batch: prepare each item (teacher.prompting.prepared: boxes checked, view drawn, prompt written),
encode the chat text with the forced answer prefix (teacher.prompting.encoding), generate greedily while
teacher.maps.capture keeps only the attention rows of the answer's tokens (teacher.prompting.generation), then
parse the answer (teacher.maps.answers), average the rows of its words (teacher.maps.word_maps) and filter
them (teacher.maps.filters, Eq. 11/12). What the maps depend on is the weightless TeacherSpec it
carries (teacher.spec); this class adds the weights, the forward and the capture.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from pipeline.geometry import MapGeometry
from teacher.batching import CPU_BATCH_SIZE, auto_batch_size, free_memory
from teacher.maps.answers import foreground_correct, parse_answer
from teacher.maps.audit import audit_record
from teacher.maps.capture import ROWS_ATTENTION, RowCapture, capturing
from teacher.maps.filters import filtered_maps
from teacher.maps.spans import decode_with_spans
from teacher.maps.word_maps import RowFn, word_map, word_positions
from teacher.prompting.encoding import Encoded, encode
from teacher.prompting.generation import answer_ids, cut_by_budget, greedy_kwargs
from teacher.prompting.prepared import Prepared, prepare
from teacher.results import MapResult, TeacherInput
from teacher.spec import TeacherSpec

LOG = logging.getLogger(__name__)
BUDGET_CUT = "answer cut by the token budget ({budget} new tokens): {answer!r}"


def check_facts(description: TeacherSpec, model, processor) -> None:
    """The checkpoint facts the spec was built from are the loaded model's: a cache key never
    describes another model than the one that computes the maps."""
    config, text = model.config, model.config.text_config
    facts = description.facts
    loaded = {
        "image_size": int(processor.image_processor.crop_size["height"]),
        "num_image_tokens": int(config.image_seq_length),
        "image_token_id": int(config.image_token_id),
        "num_layers": int(text.num_hidden_layers),
        "num_heads": int(text.num_attention_heads),
        "max_positions": int(text.max_position_embeddings),
    }
    differ = {k: (getattr(facts, k), v) for k, v in loaded.items() if getattr(facts, k) != v}
    if differ:
        raise RuntimeError(f"teacher {facts.source}: files and loaded model disagree: {differ}")


class Teacher:
    """A loaded LLaVA-1.5 with its description (see teacher.load_teacher)."""

    def __init__(
        self,
        description: TeacherSpec,
        model: LlavaForConditionalGeneration,
        processor: LlavaProcessor,
    ) -> None:
        check_facts(description, model, processor)
        self.description = description
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        d = description
        self.cfg, self.vocabulary, self.template, self.weights = (
            d.cfg, d.vocabulary, d.template, d.weights,
        )  # fmt: skip
        self.layers, self.heads, self.max_new_tokens = d.layers, d.heads, d.max_new_tokens
        self.num_image_tokens, self.image_token_id = d.num_image_tokens, d.facts.image_token_id
        self.grid, self.forced = d.grid, d.forced

    def spec(self) -> dict:
        """Everything that changes a map (teacher.spec.TeacherSpec.spec)."""
        return self.description.spec()

    def geometry_spec(self) -> MapGeometry:
        return self.description.geometry_spec()

    # ---- preparation -------------------------------------------------------------------------

    def prepare(self, item: TeacherInput) -> Prepared:
        return prepare(self.description, item)

    def prompt_tokens(self, items: list[TeacherInput]) -> list[int]:
        """Each item's prompt length in tokens as the model sees it (text + image tokens)."""
        lengths: dict[str, int] = {}
        for item in items:
            text = self.description.prompt(item)[0]
            if text not in lengths:  # prompts repeat per class: tokenize each once
                lengths[text] = len(self.tokenizer(text)["input_ids"])
                self.description.check_prompt_tokens(lengths[text], f"{item.key}'s prompt")
        image = self.num_image_tokens - 1  # the one <image> token becomes the image's tokens
        return [lengths[self.description.prompt(item)[0]] + image for item in items]

    def length_order(self, items: list[TeacherInput]) -> list[int]:
        """Item indices sorted (stably) by prompt length: batches of equal length need no
        padding mask, so SDPA keeps its causal kernel, and mixed batches pad less."""
        lengths = self.prompt_tokens(items)
        return sorted(range(len(items)), key=lengths.__getitem__)

    def batch_size_for(self, items: list[TeacherInput]) -> int:
        """The configured batch size; "auto": from the device's free memory and the KV cache
        of the longest prompt plus the answer budget (teacher.batching), 8 on a CPU."""
        if self.cfg.batch_size != "auto":
            return self.cfg.batch_size
        free = free_memory(self.model.device)
        if free is None:
            return CPU_BATCH_SIZE
        tokens = max(self.prompt_tokens(items), default=0) + self.max_new_tokens
        dtype = self.model.get_input_embeddings().weight.dtype  # the cache's (NF4 too)
        return auto_batch_size(self.model.config.text_config, dtype, tokens, free)

    def encode(self, batch: list[Prepared], processor: LlavaProcessor | None = None) -> Encoded:
        return encode(
            processor or self.processor, batch, self.num_image_tokens, self.image_token_id,
            self.model.dtype, self.model.device,
        )  # fmt: skip

    @functools.cached_property
    def _input_processor(self) -> LlavaProcessor:
        """The input thread's own processor (copied on first use, by `extract` only): a fast
        tokenizer used from two threads at once can fail ("Already borrowed") while the main
        thread decodes answers."""
        return copy.deepcopy(self.processor)

    def prepared_batch(self, items: list[TeacherInput]) -> tuple[list[Prepared], Encoded]:
        """One batch's drawn views and model inputs (CPU work: PIL, the image processor, the
        tokenizer), with the input thread's processor."""
        batch = [self.prepare(item) for item in items]
        return batch, self.encode(batch, self._input_processor)

    def generate_kwargs(self, encoded: Encoded) -> dict:
        return greedy_kwargs(
            encoded.inputs, self.tokenizer, encoded.prompt_length, self.max_new_tokens,
            self.template.answer_format, self.forced,
        )  # fmt: skip

    # ---- fast path ---------------------------------------------------------------------------

    @torch.inference_mode()
    def run_fast(
        self, batch: list[Prepared], encoded: Encoded | None = None
    ) -> tuple[Encoded, torch.Tensor, RowFn]:
        """Generate for one batch while capturing its rows; `encoded`: the batch's inputs if
        already built (extract builds them ahead, on its input thread)."""
        encoded = self.encode(batch) if encoded is None else encoded
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
            device=self.model.device,
        )
        with capturing(capture):
            sequences = self.model.generate(**self.generate_kwargs(encoded))
        capture.to_host()  # one copy of the rows; `finish` reads them per word on the host
        return encoded, sequences.cpu(), capture.row

    def extract(
        self, items: list[TeacherInput], on_images: Callable[[int], None] | None = None
    ) -> list[MapResult]:
        """MapResults in the order of `items` (batches are formed by prompt length);
        `on_images(n)` hears of each finished batch of n images. The next batch's views and
        inputs are built on a second thread while the model runs this one. A batch that runs
        out of GPU memory is retried at half the size (the maps do not depend on the batch
        size)."""
        results: list[MapResult | None] = [None] * len(items)
        order = self.length_order(items)
        size = self.batch_size_for(items) if items else 1
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-inputs") as inputs:

            def inputs_at(start: int) -> Future | None:
                """The inputs of the batch at `start`, queued on the input thread."""
                if start >= len(order):
                    return None
                chosen = [items[i] for i in order[start : start + size]]
                return inputs.submit(self.prepared_batch, chosen)

            start = 0
            current = inputs_at(start)
            while current is not None:
                chosen = order[start : start + size]
                following = inputs_at(start + len(chosen))  # built while this batch runs
                batch, encoded = current.result()
                try:
                    encoded, sequences, row = self.run_fast(batch, encoded)
                except torch.OutOfMemoryError:
                    if size == 1:
                        raise
                    size //= 2
                    LOG.warning(
                        "teacher batch of %d ran out of memory; retrying at %d", len(chosen), size
                    )
                    if following is not None:  # built for the old size
                        following.cancel()
                    del batch, encoded
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    current = inputs_at(start)
                    continue
                for b, (i, prepared) in enumerate(zip(chosen, batch, strict=True)):
                    results[i] = self.finish(prepared, b, encoded, sequences[b], row)
                if on_images is not None:
                    on_images(len(chosen))
                start += len(chosen)
                current = following
        return results  # type: ignore[return-value]

    # ---- from rows to maps -------------------------------------------------------------------

    def finish(
        self, prepared: Prepared, b: int, encoded: Encoded, sequence: torch.Tensor, row: RowFn
    ) -> MapResult:
        fmt, item = self.template.answer_format, prepared.item
        ids = sequence.tolist()
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        start = encoded.answer_start[b]
        answer = answer_ids(ids, start, encoded.prompt_length, ends)
        text, token_spans = decode_with_spans(self.tokenizer, answer)
        parsed = parse_answer(fmt, text, item.class_name, prepared.objects)
        cut = cut_by_budget(
            ids, encoded.prompt_length, self.max_new_tokens, ends, self.tokenizer, fmt, self.forced
        )
        if cut and self.forced:
            # The forced words are whole; only the model's last background word may be cut.
            parsed.background = parsed.background[:-1]
        fore = word_positions(parsed.foreground, token_spans, start)
        back = word_positions(parsed.background, token_spans, start)
        fore_maps = [word_map(row, b, positions, self.grid) for positions in fore]
        back_maps = [word_map(row, b, positions, self.grid) for positions in back]
        if cut and not self.forced:
            zeros = np.zeros((self.grid, self.grid), np.float32)
            c_fore, c_back, c_vlm, valid = zeros, zeros, zeros, False
            reason = BUDGET_CUT.format(budget=self.max_new_tokens, answer=text)
        else:
            c_fore, c_back, c_vlm, valid, reason = filtered_maps(
                fore_maps, back_maps, fmt, self.grid, text
            )
        audit = None
        if self.cfg.audit:
            audit = audit_record(
                ids, encoded.pad[b], start + len(answer), fore, back, encoded.image_start[b],
                self.num_image_tokens, self.layers, self.heads,
            )  # fmt: skip
        return MapResult(
            key=item.key,
            c_vlm=c_vlm,
            c_fore=c_fore,
            c_back=c_back,
            valid=valid,
            reason=reason,
            answer=text,
            fg_correct=foreground_correct(
                fmt, self.forced, parsed, text, item.class_name, prepared.objects
            ),
            audit=audit,
        )

    def use_rows_attention(self) -> None:
        self.model.set_attn_implementation({"text_config": ROWS_ATTENTION, "vision_config": "sdpa"})
