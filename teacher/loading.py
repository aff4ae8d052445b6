"""Loading LLaVA-1.5 (hub id, local directory or the tiny teacher) with bitsandbytes quantization.

One code path for every checkpoint: `from_pretrained` with a BitsAndBytesConfig when quantized,
SDPA in the vision tower and the row-capturing attention (teacher.capture) in the language model.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from transformers import (
    BitsAndBytesConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from pipeline.paths import data_dir
from teacher.capture import ROWS_ATTENTION, register_rows_attention
from teacher.config import TeacherConfig
from teacher.hub_weights import TeacherWeightsError, ensure_teacher_files

TINY_ALIAS = "tiny"


def default_tiny_dir() -> Path:
    """Where `TEACHER=tiny` lives: data/models/tiny-llava, wherever the command runs from."""
    return data_dir() / "models" / "tiny-llava"


# bitsandbytes' CPU backend asks for an optional hub-downloaded kernel on every 4-bit matmul
# setup and warns when it is absent; its pure-PyTorch fallback is what runs here, correctly.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def resolve_model(model: str) -> str:
    if model == TINY_ALIAS:
        tiny_dir = default_tiny_dir()
        if not (tiny_dir / "config.json").exists():
            raise TeacherWeightsError(
                f"TEACHER=tiny but {tiny_dir} holds no checkpoint; build it with "
                f"`make tiny-teacher` (python -m teacher.tiny --out {tiny_dir})"
            )
        return str(tiny_dir)
    return model


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
    try:
        model = LlavaForConditionalGeneration.from_pretrained(
            source,
            revision=cfg.revision,
            dtype=getattr(torch, cfg.dtype),
            quantization_config=quantization_config(cfg),
            device_map=resolve_device(cfg.device),
            attn_implementation={"text_config": ROWS_ATTENTION, "vision_config": "sdpa"},
            trust_remote_code=False,
        )
    except (OSError, HFValidationError) as err:
        raise _weights_error(source, err) from err
    return model.eval()


def weights_fingerprint(source: str, config: LlavaConfig) -> dict:
    """What identifies the weights: the hub commit when known, else hashes of local files."""
    commit = getattr(config, "_commit_hash", None)
    fingerprint: dict = {"source": source, "commit": commit}
    path = Path(source)
    if path.is_dir():
        # The folder's name only: the same files under /a/llava and /b/llava are one teacher,
        # so teams on different mounts of a shared cache land on the same entry.
        fingerprint["source"] = path.resolve().name
        digest = hashlib.sha256()
        for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.json")):
            # Header + size is enough to tell checkpoints apart without reading 14 GB.
            with file.open("rb") as fh:
                digest.update(file.name.encode() + fh.read(1 << 20))
            digest.update(str(file.stat().st_size).encode())
        fingerprint["files_sha256"] = digest.hexdigest()
    fingerprint["text_layers"] = config.text_config.num_hidden_layers
    return fingerprint
