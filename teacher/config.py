"""Teacher configuration (DESIGN 4): every field that changes a map is recorded by Teacher.spec()."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"


class TeacherConfig(BaseModel):
    # hub id, local directory, or "tiny" (= data/models/tiny-llava, built by `python -m teacher.tiny`)
    model: str = DEFAULT_MODEL
    revision: str | None = None  # hub revision; None = the default branch
    # NF4 4-bit is the default because it fits LLaVA-1.5-7B in ~4 GB with near-identical attention.
    quant: Literal["4bit", "8bit", "none"] = "4bit"
    # auto: bfloat16 where the GPU has it, else float16; float32 on the CPU (teacher.loading).
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # auto: the GPU (a real teacher without one is an error; tiny teachers fall back to the
    # CPU); cpu: the CPU even for a real teacher; cuda:N: one GPU.
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    prompt: Literal["prompt1", "prompt2", "prompt3", "dense"] = "prompt1"
    answer_mode: Literal["forced-foreground", "generate"] = "forced-foreground"
    # Visual prompt: boxes drawn at the teacher's input resolution (336 px for LLaVA-1.5).
    box_color: tuple[int, int, int] = (255, 0, 0)
    box_width: int = Field(default=3, ge=0, description="0 draws no boxes")
    # "pad" is LLaVA-1.5's own image_aspect_ratio=pad: the whole image stays visible.
    view: Literal["pad", "crop", "resize"] = "pad"
    pad_color: tuple[int, int, int] = (122, 116, 104)  # CLIP mean * 255, as LLaVA-1.5 pads
    layers: list[int] | None = None  # decoder layers to average; None = all
    heads: list[int] | None = None  # attention heads to average; None = all
    dense_background_hint: str = "[background]"  # fills {background} in the dense question
    batch_size: int = Field(default=8, ge=1)
    # None: from the template and the vocabulary's longest class name (teacher.budget); answers
    # stop at their closing quote anyway, and one cut by the budget is never a shortened word.
    max_new_tokens: int | None = Field(default=None, ge=1)
    audit: bool = False

    @model_validator(mode="after")
    def _check_prompt_mode(self) -> TeacherConfig:
        if self.prompt == "prompt3" and self.answer_mode == "forced-foreground":
            raise ValueError(
                "TeacherConfig: prompt3 (free description) has no foreground slot to force; "
                "use answer_mode='generate'"
            )
        return self
