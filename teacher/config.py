"""Teacher configuration (docs/teacher.md): every field that changes a map is in Teacher.spec()."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"

Prompt = Literal["prompt1", "prompt2", "prompt3", "dense"]


class TeacherConfig(BaseModel):
    # Frozen, and so hashable: a worker keeps one described or loaded teacher per config
    # (teacher.entry, flows.runtime), keyed by the config itself.
    model_config = ConfigDict(frozen=True)

    model: str = Field(
        default=DEFAULT_MODEL,
        description=(
            "hub id, local dir, 'tiny' (= data/models/tiny-llava, built by `python -m "
            "teacher.weights.tiny`), or a baseline: 'box', 'mask', 'uniform'"
        ),
    )
    revision: str | None = Field(default=None, description="hub revision (None: default branch)")
    quant: Literal["4bit", "8bit", "none"] = Field(
        default="4bit",
        description="NF4 4-bit fits LLaVA-1.5-7B in ~4 GB with near-identical attention",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto",
        description="auto: bfloat16 where the GPU has it, else float16; float32 on a CPU",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description=(
            "auto: the GPUs (a real teacher without one stops with an error; tiny teachers fall "
            "back to the CPU); cpu: the CPU even for a real teacher; cuda:N: one GPU"
        ),
    )
    prompt: Prompt = "prompt1"
    answer_mode: Literal["forced-foreground", "generate"] = "forced-foreground"
    box_color: tuple[int, int, int] = Field(
        default=(255, 0, 0), description="visual-prompt box RGB"
    )
    box_width: int = Field(
        default=3,
        ge=0,
        description="visual-prompt box width at 336 px (0: no boxes, Table 9's language only)",
    )
    view: Literal["pad", "crop", "resize"] = Field(
        default="pad",
        description="teacher view of the image; pad is LLaVA-1.5's own: the whole image stays",
    )
    pad_color: tuple[int, int, int] = Field(
        default=(122, 116, 104), description="CLIP mean * 255, as LLaVA-1.5 pads"
    )
    layers: tuple[int, ...] | None = Field(
        default=None, description="decoder layers to average (None: all)"
    )
    heads: tuple[int, ...] | None = Field(
        default=None, description="attention heads to average (None: all)"
    )
    dense_background_hint: str = Field(
        default="[background]", description="fills {background} in the dense question"
    )
    batch_size: int | Literal["auto"] = Field(
        default="auto",
        description=(
            "images per teacher forward; auto: as many as the free GPU memory holds (KV cache "
            "per image from the model and the prompt), 8 on a CPU"
        ),
    )
    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        description=(
            "answer budget (None: from the template and the vocabulary's longest class name); "
            "an answer cut by the budget is an invalid row, never a shortened word"
        ),
    )
    audit: bool = Field(
        default=False, description="record token ids and positions next to each map"
    )

    @model_validator(mode="after")
    def _check_batch_size(self) -> TeacherConfig:
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ValueError(
                f"TeacherConfig.batch_size: must be >= 1 or 'auto', got {self.batch_size}"
            )
        return self

    @model_validator(mode="after")
    def _check_prompt_mode(self) -> TeacherConfig:
        if self.prompt == "prompt3" and self.answer_mode == "forced-foreground":
            raise ValueError(
                "TeacherConfig: prompt3 (free description) has no foreground slot to force; "
                "use answer_mode='generate'"
            )
        return self
