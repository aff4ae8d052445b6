"""Loading LLaVA-1.5 (hub id, local directory or the tiny teacher) with bitsandbytes quantization.

One code path for every checkpoint: `from_pretrained` with a BitsAndBytesConfig when quantized,
SDPA in the vision tower and the row-capturing attention (teacher.capture) in the language model.
"""

from __future__ import annotations

import hashlib
import logging
import os
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
TINY_LLAMA_ALIAS = "tiny-llama"  # the tiny teacher with the real LLaVA-1.5 vocabulary


def default_tiny_dir(vocab: str = "bpe") -> Path:
    """Where `TEACHER=tiny` (`tiny-llama`) lives: data/models/tiny-llava(-llama)."""
    return data_dir() / "models" / ("tiny-llava-llama" if vocab == "llama" else "tiny-llava")


# bitsandbytes' CPU backend asks for an optional hub-downloaded kernel on every 4-bit matmul
# setup and warns when it is absent; its pure-PyTorch fallback is what runs here, correctly.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def resolve_model(model: str) -> str:
    if model in (TINY_ALIAS, TINY_LLAMA_ALIAS):
        vocab = "llama" if model == TINY_LLAMA_ALIAS else "bpe"
        tiny_dir = default_tiny_dir(vocab)
        if not (tiny_dir / "config.json").exists():
            make = "make tiny-teacher" + (" VOCAB=llama" if vocab == "llama" else "")
            raise TeacherWeightsError(
                f"TEACHER={model} but {tiny_dir} holds no checkpoint; build it with "
                f"`{make}` (python -m teacher.tiny --vocab {vocab} --out {tiny_dir})"
            )
        return str(tiny_dir)
    return model


class TeacherDeviceError(RuntimeError):
    """A real teacher was asked to run where it cannot (no usable GPU, and no explicit CPU)."""


def is_tiny_checkpoint(source: str) -> bool:
    """The tiny random teachers (teacher.tiny) run anywhere; real checkpoints need a GPU."""
    return (Path(source) / "TINY_TEACHER.json").exists()


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "no CUDA device is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible else "")


def resolve_device(device: str, source: str | None = None) -> str:
    """ "auto": the GPU, or the CPU for a tiny teacher; a real teacher never lands on the CPU
    without being asked (`--device cpu`): minutes per image instead of a clear stop."""
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        if device == "auto" and source is not None and is_tiny_checkpoint(source):
            return "cpu"
        raise TeacherDeviceError(
            f"teacher {source or ''!s} needs a usable CUDA device, and {_no_cuda_reason()}. "
            "Run on a machine with a GPU, or pass --device cpu to run it on the CPU anyway "
            "(slow: LLaVA-1.5-7B takes minutes per image there)."
        )
    return "cuda" if device == "auto" else device


def resolve_dtype(cfg: TeacherConfig, source: str) -> str:
    """ "auto": bfloat16 on GPUs that have it (fp16 with left padding is a known NaN source for
    Llama-2/LLaVA), float16 on older GPUs, float32 on the CPU."""
    if cfg.dtype != "auto":
        return cfg.dtype
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def resolve_config(cfg: TeacherConfig, source: str) -> TeacherConfig:
    """The config with its dtype decided (the spec, and so the cache key, records the real one)."""
    return cfg.model_copy(update={"dtype": resolve_dtype(cfg, source)})


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
