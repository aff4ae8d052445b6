"""Loading LLaVA-1.5 (hub id, local directory or the tiny teacher) with bitsandbytes quantization.

One code path for every checkpoint: `from_pretrained` with a BitsAndBytesConfig when quantized,
SDPA in the vision tower and the row-capturing attention (teacher.maps.capture) in the language model.
Which checkpoint and where it lives: teacher.weights.checkpoint; on which device, in which dtype:
teacher.weights.devices.
"""

from __future__ import annotations

import logging

import torch
from huggingface_hub.errors import HFValidationError
from transformers import (
    BitsAndBytesConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from teacher.config import TeacherConfig
from teacher.maps.capture import ROWS_ATTENTION, register_rows_attention
from teacher.weights.aliases import resolve_model
from teacher.weights.devices import resolve_device
from teacher.weights.hub_weights import TeacherWeightsError, ensure_teacher_files

# bitsandbytes' CPU backend asks for an optional hub-downloaded kernel on every 4-bit matmul
# setup and warns when it is absent; its pure-PyTorch fallback is what runs here, correctly.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def quantization_config(cfg: TeacherConfig) -> BitsAndBytesConfig | None:
    dtype = getattr(torch, cfg.dtype)
    if cfg.quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            # The vision tower and projector stay in full precision, as in LLaVA's own 4-bit setup.
            llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
        )
    if cfg.quant == "8bit":
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
        )
    return None


def _weights_error(source: str, err: Exception) -> TeacherWeightsError:
    return TeacherWeightsError(
        f"could not load teacher weights {source!r}: {err}\n"
        "Without network access the weights must already be on disk: download "
        "llava-hf/llava-1.5-7b-hf once (hf download llava-hf/llava-1.5-7b-hf --local-dir "
        "llava-1.5-7b-hf) and set TEACHER=/path/to/llava-1.5-7b-hf, or use TEACHER=tiny "
        "(`make tiny-teacher` builds a random tiny LLaVA for offline runs)."
    )


def load_config_and_processor(cfg: TeacherConfig) -> tuple[LlavaConfig, LlavaProcessor, str]:
    """(model config, processor, resolved path or hub id): everything but the weights, cheap."""
    source = resolve_model(cfg.model)
    ensure_teacher_files(source, cfg.revision)  # offline: the local HF cache, or a clear error
    try:
        processor = LlavaProcessor.from_pretrained(source, revision=cfg.revision)
        config = LlavaConfig.from_pretrained(source, revision=cfg.revision)
    except (OSError, HFValidationError) as err:  # offline, no such repo/dir, no cached files
        raise _weights_error(source, err) from err
    if processor.tokenizer.pad_token is None:
        # LLaVA-1.5's tokenizer has a <pad> token; this guards other checkpoints.
        processor.tokenizer.pad_token = processor.tokenizer.unk_token
    processor.tokenizer.padding_side = "left"  # batched generation continues every row at its end
    return config, processor, source


def load_model(cfg: TeacherConfig, source: str) -> LlavaForConditionalGeneration:
    """The weights, quantized as cfg.quant says, with the row-capturing attention installed."""
    register_rows_attention()
    device = resolve_device(cfg.device, source)  # before reading 14 GB of weights
    try:
        model = LlavaForConditionalGeneration.from_pretrained(
            source,
            revision=cfg.revision,
            dtype=getattr(torch, cfg.dtype),
            quantization_config=quantization_config(cfg),
            device_map=device,
            attn_implementation={"text_config": ROWS_ATTENTION, "vision_config": "sdpa"},
            trust_remote_code=False,
        )
    except (OSError, HFValidationError) as err:
        raise _weights_error(source, err) from err
    return model.eval()
