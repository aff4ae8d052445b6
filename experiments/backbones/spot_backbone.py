"""The stand-in backbone of `sample-spot` (`make spot-backbone`): experiments.backbones.backbone's recipe
on images like sample-spot's, so that its frozen features know the shapes and the markers.

Pretraining draws one of six shapes (sample-spot's four among them) and one of eight marker
colours (its four, then four more) in independent random pairs, on sample-spot's varied
backgrounds with the marker in the band; the dense head names which shape covers each patch
(its pixel mask at the patch centre). Nothing in it ties a shape to a marker.

    python -m experiments.backbones.backbone --task spot --out data/models/spot-vit.safetensors
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from experiments.backbones.common import IMG_SIZE, MODEL_KWARGS, PretrainTask
from pipeline.datasets.sample_coco import CLASSES
from pipeline.datasets.spot import IMAGE_SIZE, MARKERS, SPOT_SHAPES, render_spot

PRETRAIN_SHAPES = CLASSES  # circle square triangle star cross hexagon
PRETRAIN_MARKERS = [*MARKERS, (240, 20, 240), (20, 240, 240), (250, 250, 250), (10, 10, 10)]


def to_pixels(images: list) -> torch.Tensor:
    """PIL images at IMAGE_SIZE -> [N, 3, S, S] in [-1, 1] (timm's ViT normalization)."""
    arrays = [np.asarray(i.resize((IMG_SIZE, IMG_SIZE), resample=3), np.float32) for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def render_pretraining(
    count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels [N, 2] = (shape, marker) drawn independently, patch labels [N, P]
    (0: no shape at the patch centre, 1 + shape: inside the shape's mask)."""
    shapes = rng.integers(len(PRETRAIN_SHAPES), size=count)
    markers = rng.integers(len(PRETRAIN_MARKERS), size=count)
    grid = IMG_SIZE // MODEL_KWARGS["patch_size"]
    centres = ((np.arange(grid) + 0.5) * IMAGE_SIZE / grid).astype(int)  # patch centre pixels
    images, patches = [], np.zeros((count, grid, grid), dtype=np.int64)
    for i, (shape, marker) in enumerate(zip(shapes, markers, strict=True)):
        image, _, mask = render_spot(PRETRAIN_SHAPES[shape], PRETRAIN_MARKERS[marker], rng)
        images.append(image)
        patches[i][mask[np.ix_(centres, centres)] > 0] = 1 + shape
    labels = torch.from_numpy(np.stack([shapes, markers], axis=1))
    return to_pixels(images), labels, torch.from_numpy(patches).flatten(1)


def render_spot_like(
    count: int, img_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Benchmark-like images for the probe: sample-spot's 4 shapes x 4 markers, independent."""
    shapes = rng.integers(len(SPOT_SHAPES), size=count)
    markers = rng.integers(len(MARKERS), size=count)
    images = [
        render_spot(SPOT_SHAPES[s], MARKERS[m], rng)[0]
        for s, m in zip(shapes, markers, strict=True)
    ]
    assert img_size == IMG_SIZE
    return to_pixels(images), torch.from_numpy(np.stack([shapes, markers], axis=1))


def spot_probe(model: nn.Module, img_size: int, **kwargs) -> dict:
    from experiments.backbones.probe import probe

    return probe(model, img_size, render=render_spot_like, names=("shape", "marker"), **kwargs)


SPOT_TASK = PretrainTask(
    name="sample-spot",
    shapes=len(PRETRAIN_SHAPES),
    cues=len(PRETRAIN_MARKERS),
    cue_name="marker",
    render=render_pretraining,
    probe=spot_probe,
    description="shape (6 sample-coco shapes) and marker colour (8) in independent random pairs "
    "on varied backgrounds, plus which shape's mask covers each patch centre (dense head, "
    "discarded)",
)
