"""A stand-in foundation model for the sample-shift benchmark: a small timm ViT pretrained on a
broad generated task, saved as safetensors (`make backbone`).

No pretrained ViT can be downloaded here, and a random frozen backbone knows nothing, so no head
or attention on top of it can show what the maps teach. This backbone is trained to name both
the shape (all ten sample shapes, the benchmark's four among them) and the background colour
(the benchmark's four and four more), drawn in independent random pairings: its features know
objects and backgrounds apart, as an ImageNet backbone knows TinyImageNet's classes, and nothing
in its training ties a shape to a background.

    python -m experiments.backbone --out data/models/shift-vit.safetensors
    make train DATASET=sample-shift WEIGHTS=data/models/shift-vit.safetensors \\
      MODEL=vit_tiny_patch16_224 TRAIN_ARGS='--img-size 32 --model-kwargs "{...}"'
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
from safetensors.torch import save_file

from pipeline.datasets.generated import SHAPES
from pipeline.datasets.shift import BACKGROUNDS
from pipeline.paths import data_dir

# The benchmark student: 32 px, 4 px patches (an 8x8 grid), 3 blocks of width 64 (2 heads):
# small enough that 3 seeds of every variant train in minutes on 2 CPU cores.
MODEL = "vit_tiny_patch16_224"
IMG_SIZE = 32
MODEL_KWARGS = {"patch_size": 4, "depth": 3, "embed_dim": 64, "num_heads": 2}
# Pretraining backgrounds: the benchmark's four, then four others.
PRETRAIN_BACKGROUNDS = [rgb for _, rgb in BACKGROUNDS] + [
    (170, 60, 50),
    (90, 90, 90),
    (60, 150, 160),
    (180, 180, 60),
]
DEFAULT_OUT = data_dir() / "models" / "shift-vit.safetensors"


def render_batch(count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` images at IMG_SIZE ([N, 3, H, W] in [-1, 1], timm's ViT normalization) with
    labels [N, 2] = (shape, background), shape and background drawn independently."""
    from pipeline.datasets.shift import render_pair

    shapes = rng.integers(len(SHAPES), size=count)
    backgrounds = rng.integers(len(PRETRAIN_BACKGROUNDS), size=count)
    images = []
    for shape, background in zip(shapes, backgrounds, strict=True):
        image, _ = render_pair(int(shape), PRETRAIN_BACKGROUNDS[int(background)], rng)
        images.append(np.asarray(image.resize((IMG_SIZE, IMG_SIZE), resample=3), dtype=np.float32))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, torch.from_numpy(np.stack([shapes, backgrounds], axis=1))


def create_model() -> torch.nn.Module:
    return timm.create_model(
        MODEL,
        pretrained=False,
        num_classes=len(SHAPES) + len(PRETRAIN_BACKGROUNDS),
        img_size=IMG_SIZE,
        **MODEL_KWARGS,
    )


def losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tasks on one head: the first len(SHAPES) logits name the shape, the rest the
    background. Returns the summed loss and the per-task hits [N, 2]."""
    shape_logits, bg_logits = logits[:, : len(SHAPES)], logits[:, len(SHAPES) :]
    loss = F.cross_entropy(shape_logits, labels[:, 0]) + F.cross_entropy(bg_logits, labels[:, 1])
    hits = torch.stack(
        [shape_logits.argmax(-1) == labels[:, 0], bg_logits.argmax(-1) == labels[:, 1]], dim=1
    )
    return loss, hits


def pretrain(
    out: Path,
    images: int = 3000,
    epochs: int = 5,
    batch: int = 64,
    seed: int = 0,
    heldout: int = 1000,
) -> dict:
    """Train the backbone and save it (plus a JSON card next to it); returns the card."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    x, y = render_batch(images, rng)
    x_test, y_test = render_batch(heldout, np.random.default_rng(seed + 1000))
    model = create_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((images + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(images)
        for i in range(0, images, batch):
            idx = order[i : i + batch]
            loss, _ = losses(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate(model, x_test, y_test)
        print(
            f"backbone epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} held-out shape "
            f"{accuracy[0]:.3f} background {accuracy[1]:.3f}",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    card = {
        "model": MODEL,
        "img_size": IMG_SIZE,
        "model_kwargs": MODEL_KWARGS,
        "task": "shape (10 sample shapes) and background colour (8) in independent random pairs",
        "images": images,
        "epochs": epochs,
        "seed": seed,
        "heldout_shape_top1": accuracy[0],
        "heldout_background_top1": accuracy[1],
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return card


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    _, hits = losses(model(x), y)
    shape, background = hits.float().mean(0).tolist()
    return shape, background


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.backbone", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    card = pretrain(args.out, args.images, args.epochs, seed=args.seed)
    print(json.dumps(card, indent=1))
    print(f"backbone: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
