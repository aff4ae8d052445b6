"""Training and evaluation loops of the dense students (DETR's engine.py); `student.engine.fit`
runs them epoch by epoch with the classifier's resume, checkpoints and metrics."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from student.dense.coco_eval import coco_metrics, ground_truth, predictions
from student.dense.loss import DenseCriterion
from student.dense.model import DenseStudent
from student.dense.plots import plot_dense_overlays
from student.distributed import is_distributed, unwrap
from student.engine import autocast, to_device, train_one_epoch
from student.loss import renormalize
from student.model import count_forward_flops, count_parameters
from student.plots import denormalize


def detr_targets(batch: dict, device: torch.device) -> list[dict]:
    return [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]


def detr_forward(model: nn.Module, batch: dict, with_interactions: bool) -> dict:
    """The detector's training forward: DETR's losses need the targets."""
    targets = detr_targets(batch, batch["image"].device)
    return model(batch["image"], labels=targets, with_interactions=with_interactions)


def train_one_epoch_dense(*args, **kwargs) -> dict:
    """The classifier's epoch (student.engine.train_one_epoch) with the detector's forward:
    sample-weighted means of every named loss term, the last lr and the step."""
    return train_one_epoch(*args, forward=detr_forward, **kwargs)


@torch.no_grad()
def evaluate_dense(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    criterion: DenseCriterion | None = None,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
) -> dict:
    """COCOeval (bbox, and segm for segmentation) over the loader's split; with a criterion,
    also the mean loss terms. Under torchrun each rank predicts its shards, rank sums agree."""
    model.eval()
    bare: DenseStudent = unwrap(model)
    gt, ids = ground_truth(loader.split_dir)
    sums: dict[str, float] = defaultdict(float)
    rows: list[dict] = []
    seen = 0
    for batch in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True):
        batch = to_device(batch, device)
        with autocast(device, amp, amp_dtype):
            labels = detr_targets(batch, device) if criterion is not None else None
            aligns = criterion is not None and criterion.alignment
            outputs = model(batch["image"], labels=labels, with_interactions=aligns)
            if criterion is not None:
                for name, value in criterion(outputs, batch).items():
                    sums[name] += float(value) * batch["image"].shape[0]
        seen += batch["image"].shape[0]
        rows += predictions(
            outputs["detr"], batch["key"], batch["orig_size"], ids, bare.detr_cfg.max_detections
        )
    if is_distributed():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (rows, dict(sums), seen))
        rows = [r for part in gathered for r in part[0]]
        sums = defaultdict(float)
        for part in gathered:
            for k, v in part[1].items():
                sums[k] += v
        seen = sum(part[2] for part in gathered)
    if seen == 0:
        raise ValueError("evaluation loader yielded no batches")
    result = {name: total / seen for name, total in sums.items()}
    for iou_type in ("bbox", "segm") if bare.task == "segment" else ("bbox",):
        for name, value in coco_metrics(gt, rows, iou_type).items():
            result[f"{iou_type}_{name}"] = value
    result["samples"] = seen
    return result


@torch.no_grad()
def save_dense_overlays(
    model: DenseStudent, batch: dict, out_path: Path, count: int, class_names: list[str]
) -> Path | None:
    """Predictions (boxes, masks) with the ground truth, C_VLM and C_AGT for `count` images."""
    if count <= 0:
        return None
    model.eval()
    device = next(model.parameters()).device
    images = batch["image"][:count].to(device)
    outputs = model(images, with_interactions=model.cfg is not None)
    size = images.shape[-1]
    detr = outputs["detr"]
    from transformers import ConditionalDetrImageProcessor

    results = ConditionalDetrImageProcessor().post_process_object_detection(
        detr, threshold=0.0, target_sizes=[(size, size)] * len(images), top_k=10
    )
    preds = []
    for b, r in enumerate(results):
        pred = {k: v.cpu().tolist() for k, v in r.items()}
        masks = getattr(detr, "pred_masks", None)
        if masks is not None:
            flat = detr.logits[b].sigmoid().flatten()
            queries = flat.topk(min(10, flat.numel())).indices // detr.logits.shape[-1]
            up = torch.nn.functional.interpolate(masks[b, queries][None], size=(size, size))[0]
            pred["masks"] = (up.sigmoid() > 0.5).cpu().numpy()
        preds.append(pred)
    truths = []
    for target in batch["targets"][:count]:
        cx, cy, w, h = target["boxes"].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * size
        truths.append({"boxes": xyxy.tolist()})
    g = model.grid

    def as_grid(rows: torch.Tensor | None) -> np.ndarray | None:
        if rows is None:
            return None
        return renormalize(rows.float().mean(0)).reshape(-1, g, g).cpu().numpy()

    c_vlm = batch.get("c_vlm")
    if c_vlm is not None and not bool(batch["map_valid"][:count].any()):
        c_vlm = None  # a split without maps: no empty panels
    cfg = model.data_config
    return plot_dense_overlays(
        out_path,
        denormalize(images.float().cpu(), cfg["mean"], cfg["std"]),
        preds,
        truths,
        {
            "C_VLM": None if c_vlm is None else c_vlm[:count].float().cpu().numpy(),
            "C_AGT": as_grid(outputs.get("agt_cls")),
        },
        class_names,
        titles=list(batch.get("key", [])[:count]) or None,
    )


def dense_overheads(model: DenseStudent, plain: DenseStudent) -> dict[str, float]:
    """Parameters and forward FLOPs of the I-ViT detector and of the same detector on the plain
    ViT (no interaction queries, no gates): Table 6's columns, and their relative overheads."""
    trainable, total = count_parameters(model)
    _, plain_total = count_parameters(plain)
    flops = count_forward_flops(model, model.img_size)
    plain_flops = count_forward_flops(plain, plain.img_size)
    return {
        "params": total, "trainable": trainable, "plain_params": plain_total,
        "flops": flops, "plain_flops": plain_flops,
        "param_overhead": (total - plain_total) / plain_total,
        "flops_overhead": (flops - plain_flops) / plain_flops,
    }  # fmt: skip


def summarize_dense(model: DenseStudent, plain: DenseStudent) -> str:
    o = dense_overheads(model, plain)
    return (
        f"Conditional DETR ({model.task}) on I-ViT {model.cfg.model if model.cfg else '?'} @ "
        f"{model.img_size}px: params {o['params'] / 1e6:.4f}M (trainable "
        f"{o['trainable'] / 1e6:.4f}M) vs {o['plain_params'] / 1e6:.4f}M on the plain ViT "
        f"(+{o['param_overhead']:.4%}); forward {o['flops'] / 1e9:.4f} GFLOPs vs "
        f"{o['plain_flops'] / 1e9:.4f} (+{o['flops_overhead']:.4%})\n"
        f"param_overhead={o['param_overhead']:.6f} flops_overhead={o['flops_overhead']:.6f}"
    )
