"""The teacher without its weights: what determines its maps, and so its cache key (docs/design.md).

`TeacherSpec` holds the config, the class vocabulary and the checkpoint's facts (teacher.weights.checkpoint),
and answers what a cache lookup and the prompts need: spec() (hashed into the key), the grid, the
view geometry, the selected layers and heads, the answer budget and each item's prompt text. It
never loads weights, torch or transformers: `describe_teacher` builds one in milliseconds, and the
running `Teacher` (teacher.model) is one of these plus the loaded model.
"""

from __future__ import annotations

from typing import Any

from pipeline.geometry import MapGeometry
from teacher.config import TeacherConfig
from teacher.maps.filters import filter_name
from teacher.prompting.budget import answer_budget, check_context, longest_name
from teacher.prompting.prompts import (
    CHAT_FORM,
    PROMPTS,
    chat_text,
    forced_answer_text,
    question_text,
)
from teacher.results import TeacherInput
from teacher.weights.checkpoint import CheckpointFacts

# 2: the checkpoint is named by its content (teacher.weights.identity), no longer by folder name or hub
# commit; every entry of a real teacher got a new key once.
SPEC_FORMAT = 2
ROW_RULE = (
    "query p-1 for each answer token p of a word; word = mean of its rows; "
    "background = mean of its words; punctuation and joining words skipped"
)


class TeacherSpec:
    """A LLaVA teacher described by its config, vocabulary and checkpoint facts (no weights).

    `tokenizer` counts tokens (called like a transformers tokenizer: text -> {"input_ids"});
    `weights` identifies the checkpoint by content (teacher.weights.identity.checkpoint_identity).
    Raises ValueError for layers/heads the model lacks and PromptTooLongError when the longest
    class name's prompt cannot fit the context: before any image is processed.
    """

    def __init__(
        self,
        cfg: TeacherConfig,
        vocabulary: list[str],
        facts: CheckpointFacts,
        tokenizer: Any,
        weights: dict,
    ) -> None:
        self.cfg = cfg
        self.vocabulary = list(vocabulary)
        self.facts = facts
        self.weights = weights
        self.template = PROMPTS[cfg.prompt]
        self.image_size = facts.image_size
        self.num_image_tokens = facts.num_image_tokens
        self.max_positions = facts.max_positions
        num_layers = facts.num_layers
        if cfg.layers and any(not -num_layers <= i < num_layers for i in cfg.layers):
            raise ValueError(f"TeacherConfig.layers {cfg.layers}: the model has {num_layers}")
        # Negative indices count from the last layer, as in Python.
        self.layers = sorted({i % num_layers for i in (cfg.layers or range(num_layers))})
        num_heads = facts.num_heads
        if cfg.heads and any(not 0 <= h < num_heads for h in cfg.heads):
            raise ValueError(f"TeacherConfig.heads {cfg.heads}: the model has {num_heads} heads")
        self.heads = sorted(set(cfg.heads)) if cfg.heads else None
        self.max_new_tokens = cfg.max_new_tokens or answer_budget(
            tokenizer, self.template, self.vocabulary, self.forced
        )
        # The longest class name makes the longest prompt: fail before any image, not mid-run.
        name = longest_name(tokenizer, self.vocabulary)
        longest = self.prompt(TeacherInput("", None, [], name, 0))[0]  # type: ignore[arg-type]
        self.check_prompt_tokens(len(tokenizer(longest)["input_ids"]), f"prompt for class {name!r}")

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
            "selection": {"layers": self.layers, "heads": self.heads, "rows": ROW_RULE},
            "filter": filter_name(self.template.answer_format),
            "grid": self.grid,
        }

    def geometry_spec(self) -> MapGeometry:
        """The view geometry shared by every map (per-image scale follows from the image size)."""
        return MapGeometry(mode=self.cfg.view, size=self.image_size, grid=self.grid)

    def prompt(self, item: TeacherInput) -> tuple[str, int, list[str]]:
        """(full chat text, characters before the answer, target objects) of one item."""
        objects = list(item.object_names or [item.class_name])
        question = question_text(
            self.template, self.vocabulary, objects, self.cfg.dense_background_hint
        )
        forced = forced_answer_text(self.template, item.class_name, objects) if self.forced else ""
        return chat_text(question, forced), len(chat_text(question, "")), objects

    def check_prompt_tokens(self, prompt_tokens: int, what: str) -> None:
        """PromptTooLongError when a prompt of this many tokens, its image and the answer
        budget exceed the model's context."""
        check_context(
            prompt_tokens, self.num_image_tokens, self.max_new_tokens, self.max_positions, what
        )
