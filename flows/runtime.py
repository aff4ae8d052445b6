"""Per-process state of flow workers: loaded teachers and the accelerator each task may use.

Tasks receive paths and keys, never models (docs/scale-out.md); a worker process loads a teacher
and keeps it for every shard it is given, whichever task runner placed the task there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Iterator
from functools import cache

from teacher.config import TeacherConfig


@cache  # one teacher per (config, vocabulary, device): one per GPU, never evicted and reloaded
def _teacher(config: TeacherConfig, vocabulary: tuple[str, ...], device: str):
    from teacher import load_teacher

    # The pool hands out a GPU, or "cpu" when there is none: only a GPU overrides "auto", so a
    # real teacher on a GPU-less machine stops with an error instead of crawling on the CPU.
    if config.device == "auto" and device.startswith("cuda"):
        config = config.model_copy(update={"device": device})
    logging.getLogger(__name__).info(
        "process %d loads teacher %s on %s (CUDA_VISIBLE_DEVICES=%s)",
        os.getpid(),
        config.model,
        device,
        visible_gpus(),
    )
    return load_teacher(config, vocabulary=list(vocabulary))


def teacher_loads() -> int:
    """How many teachers this process has loaded so far (each one once, then reused)."""
    return _teacher.cache_info().misses


def visible_gpus() -> str:
    """The GPUs this process was given (a worker's CUDA_VISIBLE_DEVICES), or "all"."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "all")


_load_lock = threading.Lock()


def get_teacher(config: TeacherConfig, vocabulary: list[str], device: str = "auto"):
    """This process's teacher for `config` (loaded on first use, then reused)."""
    with _load_lock:  # two threads must not load the same 7B model twice
        return _teacher(config, tuple(vocabulary), device)


class DevicePool:
    """Hands each concurrent task its own GPU (or the CPU), so one task runs per device."""

    def __init__(self) -> None:
        import torch  # here, not at import: a nothing-to-do run never asks for a device

        count = torch.cuda.device_count()
        self.devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
        self._free: queue.Queue[str] = queue.Queue()
        for device in self.devices:
            self._free.put(device)

    @contextlib.contextmanager
    def acquire(self) -> Iterator[str]:
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)


_pool: DevicePool | None = None


def device_pool() -> DevicePool:
    global _pool
    if _pool is None:
        _pool = DevicePool()
    return _pool


def default_concurrency() -> int:
    """One task per GPU; one on a CPU-only machine (a teacher already uses every core)."""
    import torch

    return max(1, torch.cuda.device_count())
