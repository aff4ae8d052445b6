"""Where a teacher runs and in which precision: the device check and the `auto` dtype.

The dtype is part of the teacher's spec (and so of the cache key), so it is decided before any
weights load, also when a run only looks its entry up. torch is imported only when the answer
depends on it: an explicit dtype, `--device cpu`, or a Linux/macOS machine without any GPU
device node need no torch, which keeps a nothing-to-do rerun fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from teacher.config import TeacherConfig
from teacher.weights.aliases import is_tiny_checkpoint


class TeacherDeviceError(RuntimeError):
    """A real teacher was asked to run where it cannot (no usable GPU, and no explicit CPU)."""


def no_gpu_device_node() -> bool:
    """True when this machine certainly has no GPU torch could use: Linux without NVIDIA
    (/dev/nvidia0...), WSL (/dev/dxg) or ROCm (/dev/kfd) device nodes, or macOS (no CUDA).
    False means "ask torch" (a node may exist while the driver or CUDA_VISIBLE_DEVICES hides
    it); this only skips a 2 s torch import where torch's answer cannot be yes."""
    if sys.platform == "darwin":
        return True
    if not sys.platform.startswith("linux"):
        return False
    dev = Path("/dev")
    gpu_nodes = [*dev.glob("nvidia[0-9]*"), dev / "dxg", dev / "kfd"]
    return not any(node.exists() for node in gpu_nodes)


def cuda_available() -> bool:
    if no_gpu_device_node():
        return False
    import torch

    return torch.cuda.is_available()


def _no_cuda_reason() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "no CUDA device is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible else "")


def resolve_device(device: str, source: str | None = None) -> str:
    """ "auto": the GPU, or the CPU for a tiny teacher; a real teacher never lands on the CPU
    without being asked (`--device cpu`): minutes per image instead of a clear stop."""
    if device == "cpu":
        return device
    if not cuda_available():
        if device == "auto" and source is not None and is_tiny_checkpoint(source):
            return "cpu"
        raise TeacherDeviceError(
            f"teacher {source or ''!s} needs a usable CUDA device, and {_no_cuda_reason()}. "
            "Run on a machine with a GPU, or pass --device cpu to run it on the CPU anyway "
            "(slow: LLaVA-1.5-7B takes minutes per image there)."
        )
    return "cuda" if device == "auto" else device


def resolve_dtype(cfg: TeacherConfig) -> str:
    """ "auto": bfloat16 on GPUs that have it (fp16 with left padding is a known NaN source for
    Llama-2/LLaVA), float16 on older GPUs, float32 on the CPU."""
    if cfg.dtype != "auto":
        return cfg.dtype
    if cfg.device == "cpu" or not cuda_available():
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def resolve_config(cfg: TeacherConfig) -> TeacherConfig:
    """The config with its dtype decided (the spec, and so the cache key, records the real one)."""
    return cfg.model_copy(update={"dtype": resolve_dtype(cfg)})
