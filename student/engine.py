"""Training and evaluation loops (DETR's engine.py), and `fit`, which runs epochs with resume,
metrics, checkpoints and figures under one run directory."""

from __future__ import annotations

import contextlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from student.config import TrainConfig
from student.distributed import is_main_process, sum_over_ranks, unwrap
from student.human_alignment import HumanAlignment
from student.loss import InteractionCriterion, renormalize
from student.model import IViT
from student.plots import denormalize, plot_overlays
from student.run_state import (
    LAST_CHECKPOINT,
    TrainingState,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def autocast(device: torch.device, amp: bool, dtype: torch.dtype = torch.bfloat16):
    """Mixed precision on CUDA only; CPU runs plain fp32 (CPU autocast is slow and changes
    numerics the resume test relies on)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def forward_outputs(model: nn.Module, images: torch.Tensor, with_interactions: bool) -> dict:
    """Record interactions only when the criterion needs them. `model` is an IViT, possibly
    inside DistributedDataParallel, so the request goes through forward's flag."""
    if with_interactions:
        return model(images, with_interactions=True)
    return {"logits": model(images), "align_rows": None}


def optimizer_step(
    losses: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    trainable: list[nn.Parameter],
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
    where: str,
) -> None:
    """Backward of losses["loss"] and one optimizer step (AMP scaling, optional clipping); a
    non-finite loss stops training, naming `where` and every term, before it reaches the weights."""
    loss = losses["loss"]
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at {where}: {losses}")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def classifier_forward(model: nn.Module, batch: dict, with_interactions: bool) -> dict:
    """The classifier's training forward: logits, and the interaction rows when aligning."""
    return forward_outputs(model, batch["image"], with_interactions)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    epoch: int,
    amp: bool,
    *,
    step: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype = torch.bfloat16,
    grad_clip: float | None = None,
    forward: Callable[[nn.Module, dict, bool], dict] = classifier_forward,
) -> dict:
    """One pass over `loader`; `step` is the global optimizer step at the start (for the
    per-update schedule). Returns sample-weighted means of the loss terms, the last lr, the
    global step at the end, and top-1 where the model outputs class logits. `forward` runs the
    model on a batch (dense students pass their detector's; see student.dense.engine)."""
    model.train()
    criterion.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = defaultdict(float)
    seen = correct = 0
    classifies = False  # a detector's outputs have no image-level logits, so no top-1
    bar = tqdm(loader, desc=f"train {epoch}", leave=False, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device)
        with autocast(device, amp, amp_dtype):
            outputs = forward(model, batch, criterion.alignment)
            losses = criterion(outputs, batch)
        loss = losses["loss"]
        optimizer_step(
            losses, optimizer, trainable, scaler, grad_clip, f"epoch {epoch} step {step}"
        )
        step += 1
        scheduler.step_update(num_updates=step)

        n = batch["image"].shape[0]
        seen += n
        classifies = "logits" in outputs
        if classifies:
            correct += (outputs["logits"].argmax(-1) == batch["label"]).sum().item()
        for name, value in losses.items():
            sums[name] += value.item() * n
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if seen == 0:
        raise ValueError(f"train loader yielded no batches in epoch {epoch}")
    return {
        **{name: total / seen for name, total in sums.items()},
        **({"top1": correct / seen} if classifies else {}),
        "lr": optimizer.param_groups[0]["lr"],
        "step": step,
        "samples": seen,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    *,
    criterion: InteractionCriterion | None = None,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    human: HumanAlignment | None = None,
    per_sample: bool = False,
) -> dict:
    """Top-1 and loss (cross-entropy, or the criterion's terms when given); batches carrying a
    "domain" list add per-domain top-1 and their variance across domains. With `human` (and
    no criterion) every batch's interactions also go to its cosine-to-C_HUM figures.
    `per_sample`: also "hits", sample key -> 1 or 0 (what a bootstrap over test images needs)."""
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    seen = correct = 0
    per_domain: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # domain -> [correct, seen]
    hits_by_key: dict[str, int] = {}
    for batch in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True):
        batch = to_device(batch, device)
        with autocast(device, amp, amp_dtype):
            if criterion is not None:
                outputs = forward_outputs(model, batch["image"], criterion.alignment)
                losses = criterion(outputs, batch)
            else:
                outputs = (
                    unwrap(model).forward_with_interactions(batch["image"])
                    if human is not None
                    else {"logits": model(batch["image"])}
                )
                losses = {
                    "loss": nn.functional.cross_entropy(outputs["logits"].float(), batch["label"])
                }
        if human is not None and criterion is None:
            human.update(outputs, batch)
        hits = outputs["logits"].argmax(-1) == batch["label"]  # [B]
        n = hits.shape[0]
        seen += n
        correct += hits.sum().item()
        for name, value in losses.items():
            sums[name] += value.item() * n
        if per_sample:
            hits_by_key.update(zip(batch["key"], map(int, hits.tolist()), strict=True))
        for domain, hit in zip(batch.get("domain") or [], hits.tolist(), strict=False):
            if domain is None:  # datasets without domains carry None
                continue
            per_domain[domain][0] += int(hit)
            per_domain[domain][1] += 1
    sums.update(seen=seen, correct=correct)
    sums = sum_over_ranks(sums)
    correct_in = sum_over_ranks({d: c for d, (c, _) in per_domain.items()})
    seen_in = sum_over_ranks({d: s for d, (_, s) in per_domain.items()})
    per_domain = {d: [int(correct_in[d]), int(seen_in[d])] for d in seen_in}
    seen = int(sums.pop("seen"))
    if seen == 0:
        raise ValueError("evaluation loader yielded no batches")
    result = {name: total / seen for name, total in sums.items() if name != "correct"}
    result.update(top1=sums["correct"] / seen, samples=seen)
    if per_sample:  # keys are unique across ranks: the sum is the union
        result["hits"] = {k: int(v) for k, v in sorted(sum_over_ranks(hits_by_key).items())}
    if per_domain:
        accuracies = {d: c / s for d, (c, s) in sorted(per_domain.items())}
        result["domains"] = accuracies
        result["domain_variance"] = float(np.var(list(accuracies.values())))
    return result


@torch.no_grad()
def save_interaction_overlays(model: IViT, batch: dict, out_path: Path, count: int) -> Path | None:
    """Image, C_VFM, C_VLM and C_AGT (CLS rows, mean over blocks) for the first `count` images."""
    if count <= 0:
        return None
    model.eval()
    images = batch["image"][:count]
    device = next(model.parameters()).device
    outputs = model.forward_with_interactions(images.to(device))
    g = model.grid

    def as_grid(rows: torch.Tensor | None) -> np.ndarray | None:
        if rows is None:
            return None
        return renormalize(rows.float().mean(0)).reshape(-1, g, g).cpu().numpy()  # [b, g, g]

    c_vlm = batch.get("c_vlm")
    cfg = model.data_config
    return plot_overlays(
        out_path,
        denormalize(images.float(), cfg["mean"], cfg["std"]),
        {
            "C_VFM": as_grid(outputs["vfm_cls"]),
            "C_VLM": None if c_vlm is None else c_vlm[:count].float().cpu().numpy(),
            "C_AGT": as_grid(outputs["agt_cls"]),
        },
        titles=[str(k) for k in batch.get("key", [])[:count]] or None,
    )


class LoopTask(Protocol):
    """What fit's loop asks of a task (student.task.Task is the whole interface)."""

    def forward(self, model: nn.Module, batch: dict, with_interactions: bool) -> dict: ...

    def evaluate(
        self, model: nn.Module, loader: Iterable[dict], device: torch.device, **kw
    ) -> dict: ...

    def overlays(
        self, model: nn.Module, batch: dict, out_path: Path, count: int
    ) -> Path | None: ...

    def curves(self, metrics_path: Path, out_path: Path) -> Path: ...


def fit(
    task: LoopTask,
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    train_loader: Iterable[dict],
    val_loader: Iterable[dict] | None,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Epochs from the last checkpoint (if `cfg.resume`) to `cfg.epochs`; each epoch appends a
    line to metrics.jsonl, rewrites checkpoint-last and the figures. Returns this call's rows.
    `model` may be DDP-wrapped; then only rank 0 writes files. The task (student.task) supplies
    the training forward, the evaluation and the pictures."""
    device = torch.device(device)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    bare = unwrap(model)
    bare.to(device)
    amp_dtype = AMP_DTYPES[cfg.amp_dtype]
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    state = TrainingState()
    if cfg.resume and checkpoint_paths(run_dir / LAST_CHECKPOINT)[1].is_file():
        state = load_checkpoint(run_dir / LAST_CHECKPOINT, bare, optimizer, scheduler, scaler)
        _move_optimizer_state(optimizer, device)
    metrics_path = run_dir / "metrics.jsonl"
    rows = []
    for epoch in range(state.epoch, cfg.epochs):
        for loader in (train_loader, val_loader):
            if hasattr(loader, "set_epoch"):  # shuffles depend on the epoch, so resume replays them
                loader.set_epoch(epoch)
        train = train_one_epoch(
            model, criterion, train_loader, optimizer, scheduler, device, epoch, use_amp,
            step=state.step, scaler=scaler, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip,
            forward=task.forward,
        )  # fmt: skip
        state = TrainingState(epoch=epoch + 1, step=train["step"])
        row = {"epoch": epoch + 1, "step": state.step, "lr": train["lr"]}
        row.update(
            {f"train_{k}": v for k, v in train.items() if k not in ("step", "lr", "samples")}
        )
        if val_loader is not None and (
            (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        ):
            val = task.evaluate(
                model, val_loader, device, criterion=criterion, amp=use_amp, amp_dtype=amp_dtype
            )
            row.update({f"val_{k}": v for k, v in val.items() if k != "samples"})
            first = next(iter(val_loader), None) if main and cfg.overlays else None
            if first is not None:
                overlay = run_dir / "overlays" / f"epoch-{epoch + 1:03d}.png"
                task.overlays(bare, first, overlay, cfg.overlays)
        rows.append(row)
        if main:
            save_checkpoint(run_dir / LAST_CHECKPOINT, bare, optimizer, state, scheduler, scaler)
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            task.curves(metrics_path, run_dir / "curves.png")
    return rows


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """safetensors loads on CPU; AdamW's moments must live with their parameters."""
    for slots in optimizer.state.values():
        for key, value in slots.items():
            if torch.is_tensor(value) and key != "step":
                slots[key] = value.to(device)
