"""`sample-spot`: a shortcut that sits apart from the object, so attention can remove it.

Four shapes (circle, square, triangle, cross; random colour) on varied backgrounds that say
nothing about the class (gradients, noise, stripes, checkers in random colours), and a small
marker of one of four saturated colours in a band along the top edge that the shapes never enter.
In train and val the marker's colour names the class with probability `correlation` (otherwise
one of the three others, uniformly); in `test_shift` and `train_indep` (the ceiling's train
split) it is independent of the class. Unlike `sample-shift`'s background, the cue lies outside
every shape's box and mask: a CLS token that attends only to the object cannot read it.

COCO layout (one annotation per image: the shape's polygon, rasterized by pycocotools, and its
box), so that each shape's pixel mask travels into the shards and to `TEACHER=mask`:

    <root>/annotations/instances_<split>2017.json      splits: train val test_shift train_indep
    <root>/<split>2017/*.png
    <root>/<split>2017/markers.txt                      file -> marker index (an audit trail)
    <root>/GENERATOR.json                               the settings it was written with
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.datasets.generated import _background, draw_cue
from pipeline.datasets.sample_coco import rasterize, shape_polygon

IMAGE_SIZE = 64
SPOT_SHAPES = ["circle", "square", "triangle", "cross"]
# Every channel outside the backgrounds' 60-200 range, so a marker always stands out.
MARKERS: list[tuple[int, int, int]] = [(240, 20, 20), (20, 230, 20), (20, 20, 240), (240, 240, 20)]
BAND = 16  # rows 0-15 hold the marker; shapes stay at y >= BAND + 2
MARKER_SIZE = 8  # px at 64 (one 4-px patch at the student's 32 px)
RADIUS = (10.0, 15.0)
CORRELATION = (
    0.95  # P(marker == class's own) in train and val (docs/science.md: fixed by the ViT alone)
)
SPLITS = {"train": 150, "val": 50, "test_shift": 100, "train_indep": 150}  # images per class
CORRELATED = {"train": True, "val": True, "test_shift": False, "train_indep": False}
STAMP_FILE = "GENERATOR.json"


def render_spot(
    shape: str, marker: tuple[int, int, int], rng: np.random.Generator, size: int = IMAGE_SIZE
) -> tuple[Image.Image, list[tuple[float, float]], np.ndarray]:
    """One image: `shape` below the band, `marker` inside it. Returns the image, the shape's
    polygon (as stored) and its pixel mask (uint8 [size, size], pycocotools' rasterization)."""
    scale = size / IMAGE_SIZE
    image = _background(rng, size)
    r = float(rng.uniform(*RADIUS)) * scale
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform((BAND + 2) * scale + r, size - r - 1)
    polygon = [(round(x, 2), round(y, 2)) for x, y in shape_polygon(shape, cx, cy, r)]
    mask = rasterize(polygon, size)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    image.paste(Image.new("RGB", image.size, color), mask=Image.fromarray(mask * 255))
    side = round(MARKER_SIZE * scale)
    mx = int(rng.integers(0, size - side + 1))
    my = int(rng.integers(0, round(BAND * scale) - side + 1))
    image.paste(Image.new("RGB", (side, side), marker), (mx, my))
    return image, polygon, mask


def write_spot_dataset(
    root: Path,
    seed: int = 0,
    per_class: dict[str, int] | None = None,
    correlation: float = CORRELATION,
) -> Path:
    """Write every split under `root` in COCO's layout. Deterministic for a given seed."""
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation: a probability in [0, 1], got {correlation}")
    per_class = per_class or SPLITS
    rng = np.random.default_rng(seed)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SPOT_SHAPES)
    ]
    for split, count in per_class.items():
        split_correlation = correlation if CORRELATED[split] else None
        image_dir = root / f"{split}2017"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations, markers = [], [], []
        for n in range(count * len(SPOT_SHAPES)):
            label = n % len(SPOT_SHAPES)
            marker = draw_cue(label, len(MARKERS), split_correlation, rng)
            image, polygon, mask = render_spot(SPOT_SHAPES[label], MARKERS[marker], rng)
            name = f"{split}_{n:06d}.png"  # lossless: the marker's colour and the mask stay exact
            image.save(image_dir / name)
            images.append({"id": n + 1, "file_name": name, "width": IMAGE_SIZE,
                           "height": IMAGE_SIZE})  # fmt: skip
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append({
                "id": n + 1, "image_id": n + 1, "category_id": label + 1, "iscrowd": 0,
                "segmentation": [[float(v) for p in polygon for v in p]],
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })  # fmt: skip
            markers.append(f"{name}\t{marker}\n")
        (image_dir / "markers.txt").write_text("".join(markers))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        body = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(body))
    stamp = {"generator": "sample-spot", "correlation": correlation, "seed": seed,
             "per_class": per_class}  # fmt: skip
    (root / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
    return root
