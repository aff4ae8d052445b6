"""A stand-in foundation ViT for the dense demo and bench: the demo's small timm ViT pretrained to
name, for every patch, the sample-coco shape that covers it (or background), saved as
safetensors (`make dense-backbone`).

No pretrained ViT can be downloaded here, and a frozen random ViT knows nothing: Conditional DETR
on top of it has to learn shapes and their extents from random patch projections, which it does
too slowly for a demo (about 0.04 mAP after 12 epochs on 400 images). The paper's detectors sit
on an ImageNet ViT whose patch tokens already know objects; this backbone plays that part. Its
images come from sample-coco's own generator under other seeds than the dataset's (seed 0), so
no train or val image of sample-coco is seen in pretraining; it is trained on per-patch labels
only (no boxes), as an ImageNet backbone is trained on image labels only.

    python -m experiments.backbones.dense_backbone --out data/models/dense-vit.safetensors
    make train DATASET=sample-coco TASK=detect WEIGHTS=data/models/dense-vit.safetensors \\
      MODEL=vit_tiny_patch16_224 TRAIN_ARGS='--img-size 64 --model-kwargs "{...}"'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from experiments.presets import load_preset
from pipeline.datasets.sample_coco import CLASSES, IMAGE_SIZE, render_image
from pipeline.paths import models_dir

# The dense demo's student (experiments/presets/demo-detect.yaml: make demo-detect, bench.dense)
# is the shape of this backbone.
PRESET = load_preset("demo-detect")
MODEL, IMG_SIZE, MODEL_KWARGS = PRESET["model"], PRESET["img_size"], PRESET["model_kwargs"]
GRID = IMG_SIZE // MODEL_KWARGS["patch_size"]
SEED = 1  # sample-coco itself is generated with seed 0
DEFAULT_OUT = models_dir() / "dense-vit.safetensors"


def visible_mask(annotation: dict) -> np.ndarray:
    """The annotation's visible pixels (polygon or RLE, decoded by pycocotools): uint8 [S, S]."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, IMAGE_SIZE, IMAGE_SIZE))
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle)


def cell_targets(annotations: list[dict]) -> np.ndarray:
    """Per patch cell, the share of its pixels that each class covers, background first:
    float32 [GRID * GRID, 1 + len(CLASSES)], rows sum to 1 (visible masks do not overlap)."""
    cell = IMAGE_SIZE // GRID
    shares = np.zeros((GRID, GRID, 1 + len(CLASSES)), dtype=np.float32)
    for annotation in annotations:
        mask = visible_mask(annotation).astype(np.float32)  # [S, S]
        pooled = mask.reshape(GRID, cell, GRID, cell).mean(axis=(1, 3))  # [g, g]
        shares[..., annotation["category_id"]] += pooled
    shares[..., 0] = 1.0 - shares[..., 1:].sum(-1)
    return shares.reshape(GRID * GRID, -1)


def render_set(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` sample-coco images at IMG_SIZE ([N, 3, H, W] in [-1, 1], timm's ViT
    normalization) and their per-cell class shares [N, GRID^2, 1 + classes]."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(count):
        image, annotations = render_image(rng)
        small = image.resize((IMG_SIZE, IMG_SIZE), resample=3)
        images.append(np.asarray(small, dtype=np.float32))
        targets.append(cell_targets(annotations))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, torch.from_numpy(np.stack(targets))


def create_model() -> torch.nn.Module:
    """The backbone with a per-patch classifier as its head (timm drops it when a run loads the
    file with another class count, as the detector's num_classes=0 does)."""
    return timm.create_model(
        MODEL, pretrained=False, num_classes=1 + len(CLASSES), img_size=IMG_SIZE, **MODEL_KWARGS
    )


def patch_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, GRID^2, classes]: the head applied to every patch token."""
    tokens = model.forward_features(x)[:, model.num_prefix_tokens :]  # [B, P, C]
    return model.head(tokens)


def flip(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of images and their cell grids."""
    b, p, k = y.shape
    return x.flip(-1), y.reshape(b, GRID, GRID, k).flip(2).reshape(b, p, k)


def pretrain(
    out: Path, images: int = 2000, epochs: int = 4, batch: int = 32, heldout: int = 300
) -> dict:
    """Train the backbone and save it (plus a JSON card next to it); returns the card."""
    torch.manual_seed(SEED)
    start = time.perf_counter()
    x, y = render_set(images, SEED)
    x_test, y_test = render_set(heldout, SEED + 1)
    model = create_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * ((images + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(images)
        for i in range(0, images, batch):
            xb, yb = x[order[i : i + batch]], y[order[i : i + batch]]
            if torch.rand(()) < 0.5:
                xb, yb = flip(xb, yb)
            logits = patch_logits(model, xb)  # [B, P, K]
            loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(0, 1))  # soft targets
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate(model, x_test, y_test)
        print(
            f"dense backbone epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} held-out cells "
            f"{accuracy['cell_top1']:.3f}, object cells {accuracy['object_cell_top1']:.3f}",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file_atomic(model, out)
    card = {
        "model": MODEL,
        "img_size": IMG_SIZE,
        "model_kwargs": MODEL_KWARGS,
        "task": "per-patch class of sample-coco shapes (background + 6), soft cell shares",
        "images": images,
        "epochs": epochs,
        "seed": SEED,
        **{f"heldout_{k}": v for k, v in accuracy.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return card


def save_file_atomic(model: torch.nn.Module, out: Path) -> None:
    from safetensors.torch import save_file

    partial = out.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(partial))
    partial.replace(out)  # a killed run leaves no half-written backbone behind


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1 over all held-out cells and over the cells whose majority is a shape."""
    model.eval()
    predicted = patch_logits(model, x).argmax(-1)  # [N, P]
    truth = y.argmax(-1)  # [N, P]
    objects = truth > 0
    return {
        "cell_top1": float((predicted == truth).float().mean()),
        "object_cell_top1": float((predicted == truth)[objects].float().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.backbones.dense_backbone", description=__doc__
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    card = pretrain(args.out, args.images, args.epochs)
    print(json.dumps(card, indent=1))
    print(f"dense backbone: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
