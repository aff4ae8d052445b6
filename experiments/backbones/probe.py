"""Does a frozen backbone know the benchmark's shapes and backgrounds? A linear probe.

The sample-shift benchmark can only show what the maps teach when the frozen features already
separate its four shapes (and, for the shortcut, its four backgrounds). This renders images like
the benchmark's (its shapes on its backgrounds, independent pairings), takes the frozen features
the head sees (timm's pre-logits), fits one linear classifier per attribute on a train set and
reports its top-1 on held-out images.

    python -m experiments.backbones.probe --weights data/models/shift-vit.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.datasets.shift import BACKGROUNDS, SHIFT_SHAPES, render_pair


def render_benchmark_like(
    count: int, img_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 3, S, S] images in [-1, 1] and labels [N, 2] = (shape class 0-3, background 0-3)."""
    shapes = rng.integers(len(SHIFT_SHAPES), size=count)
    backgrounds = rng.integers(len(BACKGROUNDS), size=count)
    images = []
    for shape, background in zip(shapes, backgrounds, strict=True):
        image, _ = render_pair(SHIFT_SHAPES[int(shape)], int(background), rng)
        images.append(np.asarray(image.resize((img_size, img_size), resample=3), np.float32))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, torch.from_numpy(np.stack([shapes, backgrounds], axis=1))


@torch.no_grad()
def frozen_features(model: nn.Module, images: torch.Tensor, batch: int = 200) -> torch.Tensor:
    """The features a new head would see: timm's forward_head(pre_logits=True), [N, D]."""
    model.eval()
    parts = [
        model.forward_head(model.forward_features(images[i : i + batch]), pre_logits=True)
        for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> float:
    """Held-out top-1 of a multinomial logistic regression (standardized features, L-BFGS)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    head = nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(train_x), train_y)
        loss = loss + 1e-3 * head.weight.pow(2).sum()  # a little L2: 800 samples, 64 features
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((head(test_x).argmax(-1) == test_y).float().mean())


def probe(
    model: nn.Module,
    img_size: int,
    train: int = 800,
    test: int = 800,
    seed: int = 0,
    render: Callable[[int, int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
    names: tuple[str, str] = ("shape", "background"),
) -> dict:
    """Linear-probe top-1 on held-out benchmark-like images (`render`: sample-shift's by
    default): {'shape': .., names[1]: ..}."""
    render = render or render_benchmark_like
    x, y = render(train, img_size, np.random.default_rng(seed + 7000))
    x_test, y_test = render(test, img_size, np.random.default_rng(seed + 8000))
    features, features_test = frozen_features(model, x), frozen_features(model, x_test)
    return {
        name: round(linear_probe(features, y[:, i], features_test, y_test[:, i]), 3)
        for i, name in enumerate(names)
    }


def main(argv: list[str] | None = None) -> int:
    from experiments.backbones import common as bb
    from student.config import StudentConfig
    from student.model import create_backbone

    parser = argparse.ArgumentParser(
        prog="python -m experiments.backbones.probe", description=__doc__
    )
    parser.add_argument("--weights", type=Path, default=bb.DEFAULT_OUT)
    args = parser.parse_args(argv)
    cfg = StudentConfig(
        model=bb.MODEL, weights=str(args.weights), img_size=bb.IMG_SIZE,
        model_kwargs=bb.MODEL_KWARGS, num_classes=4,
    )  # fmt: skip
    print(json.dumps({"linear_probe_top1": probe(create_backbone(cfg), bb.IMG_SIZE)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
