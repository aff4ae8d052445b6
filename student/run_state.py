"""Checkpoints as safetensors + a JSON sidecar (docs/design.md): loading never unpickles anything.

`<stem>.safetensors` holds the trainable weights, the optimizer's tensor state and the torch RNG
states; `<stem>.json` holds everything else (epoch, step, optimizer hyper-parameters, scheduler
state, python/numpy RNG, a fingerprint of the frozen backbone). The frozen backbone itself is
not copied into every checkpoint: it is rebuilt from the config, and the fingerprint proves it
is the same one.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.io import atomic_path, atomic_write_text

FORMAT = 1
MODEL, OPTIM, RNG = "model.", "optimizer.", "rng."

# The run directory's rolling checkpoint: rewritten every epoch, resumed from, evaluated.
LAST_CHECKPOINT = "checkpoint-last"


@dataclass
class TrainingState:
    """Where a run stands; restored from a checkpoint on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed


def checkpoint_paths(stem: str | Path) -> tuple[Path, Path]:
    stem = Path(stem)
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def frozen_fingerprint(model: nn.Module) -> str:
    """sha256 of every non-trainable tensor, to refuse resuming onto a different backbone."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in trainable:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    stem: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `<stem>.safetensors` then `<stem>.json`, each atomically (tmp file + rename)."""
    weights_path, meta_path = checkpoint_paths(stem)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        MODEL + n: p.detach().cpu().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    optim_tensors, optim_meta = _flatten_optimizer(model, optimizer)
    tensors.update(optim_tensors)
    tensors[RNG + "torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{RNG}cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "frozen_fingerprint": frozen_fingerprint(model),
        "optimizer": optim_meta,
        "scheduler": None if scheduler is None else _jsonable(scheduler.state_dict()),
        "scaler": None if scaler is None else _jsonable(scaler.state_dict()),
        "python_rng": _jsonable(random.getstate()),
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "extra": extra or {},
    }
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "lfi-1"})
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return weights_path


def load_checkpoint(
    stem: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> TrainingState:
    """Restore what `save_checkpoint` wrote; a mismatch is an error naming the file."""
    weights_path, meta_path = checkpoint_paths(stem)
    for path in (weights_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint: missing {path}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: checkpoint format {meta.get('format')} != {FORMAT}")
    if meta["frozen_fingerprint"] != frozen_fingerprint(model):
        raise ValueError(
            f"{meta_path}: the frozen backbone differs from the one this checkpoint was trained "
            "on (other weights file, model or seed); rebuild with the run's saved config"
        )
    tensors = load_file(str(weights_path))
    params = dict(model.named_parameters())
    weights = {n[len(MODEL) :]: t for n, t in tensors.items() if n.startswith(MODEL)}
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(
            f"{weights_path}: trainable weights {sorted(set(weights) ^ expected)[:5]} differ "
            "from the model's (another ablation switch?)"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    if optimizer is not None:
        optimizer.load_state_dict(_unflatten_optimizer(model, optimizer, tensors, meta, meta_path))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta["scaler"] is not None:
        scaler.load_state_dict(meta["scaler"])
    if restore_rng:
        torch.set_rng_state(tensors[RNG + "torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith(RNG + "cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(_tuples(meta["python_rng"]))
        kind, keys, *rest = meta["numpy_rng"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    return TrainingState(epoch=meta["epoch"], step=meta["step"])


def _flatten_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensor state -> `optimizer.<param name>.<key>`; the rest -> JSON. Names, not indices, so
    that a checkpoint fails loudly rather than landing on the wrong parameter."""
    names = _optimizer_param_names(model, optimizer)
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in sd["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIM}{names[index]}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(names[index], {})[key] = value
    return tensors, {
        "param_names": names,
        "param_groups": _jsonable(sd["param_groups"]),
        "scalars": scalars,
    }


def _unflatten_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, meta_path: Path
) -> dict:
    names = _optimizer_param_names(model, optimizer)
    saved = meta["optimizer"]
    if saved["param_names"] != names:
        raise ValueError(f"{meta_path}: optimizer parameters differ from the model's")
    state: dict[int, dict] = {}
    for index, name in enumerate(names):
        slots = {
            k[len(OPTIM) + len(name) + 1 :]: v
            for k, v in tensors.items()
            if k.startswith(f"{OPTIM}{name}.") and "." not in k[len(OPTIM) + len(name) + 1 :]
        }
        slots.update(saved["scalars"].get(name, {}))
        if slots:
            state[index] = slots
    return {"state": state, "param_groups": saved["param_groups"]}


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuples(value: Any) -> Any:
    """JSON turned python's RNG tuples into lists; random.setstate wants them back."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
