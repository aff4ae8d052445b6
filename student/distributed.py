"""Multi-GPU (and multi-process CPU) training under `torchrun` with DDP (docs/scale-out.md).

Launch any training entry point with torchrun instead of python; nothing else changes:

    torchrun --standalone --nproc_per_node=<GPUs> -m <entry point> ...     # one machine
    torchrun --nnodes=2 --node_rank=<0|1> --rdzv_backend=c10d \\
             --rdzv_endpoint=<host>:29500 --nproc_per_node=8 -m <entry point> ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT); `init_distributed` reads
them, picks NCCL on CUDA and gloo on CPU, and pins each process to its GPU. The loader
(`student.loader`) splits shards by rank through webdataset's `split_by_node` and gives every
rank the same number of training batches, so DDP's collective steps line up. Without torchrun
every helper here degrades to the single-process case.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def init_distributed(backend: str | None = None, device: str = "auto") -> DistributedContext:
    """Join the process group torchrun describes (idempotent); a single process otherwise.

    `device`: "auto" (the LOCAL_RANK-th GPU if CUDA is available, else CPU), "cpu" or "cuda".
    `backend`: None picks nccl for CUDA and gloo for CPU.
    """
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend=backend or ("nccl" if use_cuda else "gloo"),
            device_id=chosen if use_cuda else None,  # binds NCCL communicators eagerly
        )
    return DistributedContext(rank, world_size, local_rank, chosen)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 writes checkpoints, metrics and plots; the others only train."""
    return get_rank() == 0


def wrap_ddp(model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """The model wrapped in DistributedDataParallel when running distributed, else unchanged.

    Frozen backbone weights (requires_grad=False) are left out of DDP's gradient buckets
    automatically; only the trainable I-ViT parts are all-reduced. Set `find_unused_parameters`
    for ablations that leave some trainable parameters out of the graph.
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model (for saving checkpoints and evaluation without collectives)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sum_over_ranks(counts: dict[str, float]) -> dict[str, float]:
    """Per-name sums over torchrun ranks (each rank saw its own shards; a name a rank never saw
    counts 0 there); a copy of `counts` in a single process."""
    if not is_distributed():
        return dict(counts)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counts))
    total: dict[str, float] = defaultdict(float)
    for rank_counts in gathered:
        for name, value in rank_counts.items():
            total[name] += value
    return dict(total)


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
