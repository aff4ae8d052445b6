"""A stand-in foundation model for the sample-shift benchmark: a small timm ViT pretrained on a
broad generated task, saved as safetensors (`make backbone`).

No pretrained ViT can be downloaded here, and a random frozen backbone knows nothing, so no head
or attention on top of it can show what the maps teach. This backbone is trained to name both
the shape (all ten sample shapes, the benchmark's four among them) and the background colour
(the benchmark's four and four more), drawn in independent random pairings: its features know
objects and backgrounds apart, as an ImageNet backbone knows TinyImageNet's classes, and nothing
in its training ties a shape to a background.

    python -m experiments.backbones.backbone --out data/models/shift-vit.safetensors
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
from safetensors.torch import load_file, save_file

from experiments.backbones.common import (
    DEFAULT_OUT,
    IMG_SIZE,
    MODEL,
    MODEL_KWARGS,
    PretrainTask,
)
from pipeline.datasets.generated import SHAPES
from pipeline.datasets.shift import BACKGROUNDS
from pipeline.io import file_sha256

# Pretraining backgrounds: the benchmark's four, then four others.
PRETRAIN_BACKGROUNDS = [rgb for _, rgb in BACKGROUNDS] + [
    (170, 60, 50),
    (90, 90, 90),
    (60, 150, 160),
    (180, 180, 60),
]
# Pretraining budget (docs/science.md: how the probe chose it).
IMAGES = 8000
EPOCHS = 14
LR = 3e-3
DENSE_WEIGHT = 1.0


def render_batch(
    count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` images at IMG_SIZE ([N, 3, H, W] in [-1, 1], timm's ViT normalization), labels
    [N, 2] = (shape, background) drawn independently, and patch labels [N, P] (0: background,
    1 + shape: the patch's centre lies in the shape's box) for the dense auxiliary task."""
    from pipeline.datasets.shift import IMAGE_SIZE, render_pair

    shapes = rng.integers(len(SHAPES), size=count)
    backgrounds = rng.integers(len(PRETRAIN_BACKGROUNDS), size=count)
    grid = IMG_SIZE // MODEL_KWARGS["patch_size"]
    centres = (np.arange(grid) + 0.5) * IMAGE_SIZE / grid  # patch centres at the rendered size
    images, patches = [], np.zeros((count, grid, grid), dtype=np.int64)
    for i, (shape, background) in enumerate(zip(shapes, backgrounds, strict=True)):
        image, (x0, y0, x1, y1) = render_pair(
            int(shape), PRETRAIN_BACKGROUNDS[int(background)], rng
        )
        images.append(np.asarray(image.resize((IMG_SIZE, IMG_SIZE), resample=3), dtype=np.float32))
        inside_x, inside_y = (centres >= x0) & (centres < x1), (centres >= y0) & (centres < y1)
        patches[i][np.outer(inside_y, inside_x)] = 1 + shape
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    labels = torch.from_numpy(np.stack([shapes, backgrounds], axis=1))
    return pixels, labels, torch.from_numpy(patches).flatten(1)


def shift_probe(model: torch.nn.Module, img_size: int, **kwargs) -> dict:
    from experiments.backbones.probe import probe

    return probe(model, img_size, **kwargs)


SHIFT_TASK = PretrainTask(
    name="sample-shift",
    shapes=len(SHAPES),
    cues=len(PRETRAIN_BACKGROUNDS),
    cue_name="background",
    render=lambda count, rng: render_batch(count, rng),
    probe=shift_probe,
    description="shape (10 sample shapes) and background colour (8) in independent random pairs, "
    "plus which shape covers each patch (dense head, discarded)",
)


def create_model(task: PretrainTask = SHIFT_TASK) -> torch.nn.Module:
    return timm.create_model(
        MODEL,
        pretrained=False,
        num_classes=task.shapes + task.cues,
        img_size=IMG_SIZE,
        **MODEL_KWARGS,
    )


def losses(
    logits: torch.Tensor, labels: torch.Tensor, shapes: int = len(SHAPES)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tasks on one head: the first `shapes` logits name the shape, the rest the cue
    (background or marker). Returns the summed loss and the per-task hits [N, 2]."""
    shape_logits, bg_logits = logits[:, :shapes], logits[:, shapes:]
    loss = F.cross_entropy(shape_logits, labels[:, 0]) + F.cross_entropy(bg_logits, labels[:, 1])
    hits = torch.stack(
        [shape_logits.argmax(-1) == labels[:, 0], bg_logits.argmax(-1) == labels[:, 1]], dim=1
    )
    return loss, hits


def pretrain(
    out: Path,
    images: int = IMAGES,
    epochs: int = EPOCHS,
    batch: int = 64,
    seed: int = 0,
    heldout: int = 1000,
    lr: float = LR,
    dense_weight: float = DENSE_WEIGHT,
    probe_images: int = 800,
    init: Path | None = None,
    task: PretrainTask = SHIFT_TASK,
) -> dict:
    """Train the backbone and save it (plus a JSON card next to it); returns the card, with the
    linear-probe top-1 of its frozen features on benchmark-like images."""
    # The same file on any machine: fixed seeds, deterministic kernels, one thread (a different
    # thread count changes the order of float reductions, hence the weights).
    deterministic(seed)
    rng = np.random.default_rng(seed)
    start, cpu0 = time.perf_counter(), time.process_time()
    x, y, patch_y = task.render(images, rng)
    x_test, y_test, _ = task.render(heldout, np.random.default_rng(seed + 1000))
    model = create_model(task)
    if init is not None:
        # Continue an earlier pretraining (a new dense head and a new schedule: a warm restart).
        model.load_state_dict(load_file(str(init)))
    # The dense head (which shape, if any, covers each patch) is thrown away after pretraining:
    # it makes the patch tokens, hence the keys the interaction queries will attend over, tell
    # object from background, as a foundation model's patch features do; it also speeds up
    # learning the shapes (measured in docs/science.md).
    dense_head = torch.nn.Linear(MODEL_KWARGS["embed_dim"], 1 + task.shapes)
    params = [*model.parameters(), *dense_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps = epochs * ((images + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(images)
        for i in range(0, images, batch):
            idx = order[i : i + batch]
            tokens = model.forward_features(x[idx])  # [b, N, C]
            loss, _ = losses(model.forward_head(tokens), y[idx], task.shapes)
            patch_logits = dense_head(tokens[:, model.num_prefix_tokens :])  # [b, P, 11]
            dense = F.cross_entropy(patch_logits.flatten(0, 1), patch_y[idx].flatten())
            optimizer.zero_grad(set_to_none=True)
            (loss + dense_weight * dense).backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate(model, x_test, y_test, task.shapes)
        print(
            f"backbone epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} dense {dense.item():.3f} "
            f"held-out shape {accuracy[0]:.3f} {task.cue_name} {accuracy[1]:.3f} "
            f"({time.process_time() - cpu0:.0f} CPU-s)",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    probe_top1 = task.probe(model, IMG_SIZE, train=probe_images, test=probe_images, seed=seed)
    card = {
        "benchmark": task.name,
        "model": MODEL,
        "img_size": IMG_SIZE,
        "model_kwargs": MODEL_KWARGS,
        "task": task.description,
        "images": images,
        "epochs": epochs,
        "init": None if init is None else {"file": str(init), **_card_of(init)},
        "lr": lr,
        "dense_weight": dense_weight,
        "seed": seed,
        "heldout_shape_top1": accuracy[0],
        f"heldout_{task.cue_name}_top1": accuracy[1],
        "linear_probe_top1": probe_top1,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
    }
    card["sha256"] = file_sha256(out)
    out.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return card


def deterministic(seed: int) -> None:
    """Seeds, deterministic algorithms and one torch thread for a reproducible pretraining."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(seed)


def _card_of(weights: Path) -> dict:
    """The budget of an earlier pretraining, from its card (empty when it has none)."""
    card = weights.with_suffix(".json")
    if not card.is_file():
        return {}
    earlier = json.loads(card.read_text())
    return {k: earlier.get(k) for k in ("images", "epochs", "lr", "init", "cpu_seconds")}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, shapes: int = len(SHAPES)
) -> tuple[float, float]:
    model.eval()
    _, hits = losses(model(x), y, shapes)
    shape, background = hits.float().mean(0).tolist()
    return shape, background


def task_named(name: str) -> PretrainTask:
    if name == "spot":
        from experiments.backbones.spot_backbone import (
            SPOT_TASK,  # imports this module: loaded late
        )

        return SPOT_TASK
    return SHIFT_TASK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.backbones.backbone", description=__doc__
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--dense-weight", type=float, default=DENSE_WEIGHT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init", type=Path, default=None,
        help="continue pretraining from this backbone file (its card is kept in the new card)",
    )  # fmt: skip
    parser.add_argument(
        "--task", choices=["shift", "spot"], default="shift",
        help="shift: shapes x background colours (sample-shift); spot: shapes x marker colours "
        "on varied backgrounds (sample-spot)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    card = pretrain(
        args.out, args.images, args.epochs, seed=args.seed, lr=args.lr,
        dense_weight=args.dense_weight, init=args.init, task=task_named(args.task),
    )  # fmt: skip
    print(json.dumps(card, indent=1))
    probe = card["linear_probe_top1"]
    figures = " ".join(f"{name} {top1:.3f}" for name, top1 in probe.items())
    print(
        f"linear probe on the frozen features ({card['benchmark']}'s 4 shapes x 4 cues, held out):"
        f" {figures} (chance 0.25 each)"
    )
    print(f"backbone: {args.out} sha256 {card['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
