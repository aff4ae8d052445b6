"""`sample-coco`: a small, deterministic detection/segmentation set in COCO's JSON layout.

    <root>/annotations/instances_{train,val}2017.json
    <root>/{train,val}2017/*.jpg

Each image holds 2-4 shapes of several classes (the shapes and colors of `sample_dataset`) on
the same varied backgrounds; shapes may overlap, later ones in front. Every shape is a polygon,
rasterized by pycocotools itself, and the image is painted through exactly those rasters, so the
annotations are the truth at pixel level: a fully visible shape is stored as its polygon; an
occluded one as the compressed RLE of its visible pixels (COCO's own format, `iscrowd` 0), and
its box is that visible region's extent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.datasets.generated import SHAPES, _background, _polygon, _star

IMAGE_SIZE = 96
CLASSES = ["circle", "square", "triangle", "star", "cross", "hexagon"]
MIN_VISIBLE = 0.5  # an occluded shape keeps at least this share of its pixels


def shape_polygon(name: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The outline of shape `name` (every class here is one simple polygon)."""
    if name == "circle":
        return _polygon(cx, cy, r, 40, 0.0)
    if name == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if name == "triangle":
        return _polygon(cx, cy, r, 3, -math.pi / 2)
    if name == "star":
        return _star(cx, cy, r, -math.pi / 2)
    if name == "hexagon":
        return _polygon(cx, cy, r, 6, 0.0)
    if name == "cross":
        w = r / 3
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"no polygon for shape {name!r}")


def rasterize(polygon: list[tuple[float, float]], size: int) -> np.ndarray:
    """pycocotools' own rasterization of one polygon: uint8 [size, size]."""
    flat = [float(v) for point in polygon for v in point]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], size, size)))


def _place_shapes(rng: np.random.Generator) -> list[tuple[int, list[tuple[float, float]]]]:
    """2-4 (label, polygon) in drawing order; each earlier shape stays at least half visible."""
    placed: list[tuple[int, list[tuple[float, float]], np.ndarray]] = []
    wanted = int(rng.integers(2, 5))
    for _ in range(200):  # rejection sampling; 200 tries is far more than 2-4 shapes ever need
        if len(placed) == wanted:
            break
        label = int(rng.integers(len(CLASSES)))
        r = float(rng.uniform(8, 22))
        cx, cy = rng.uniform(r + 1, IMAGE_SIZE - r - 1, size=2)
        # Rounded as stored in the JSON, so the stored polygon rasterizes to these pixels.
        polygon = [(round(x, 2), round(y, 2)) for x, y in shape_polygon(CLASSES[label], cx, cy, r)]
        raster = rasterize(polygon, IMAGE_SIZE)
        candidate = [*placed, (label, polygon, raster)]
        if all(v >= MIN_VISIBLE for v in _visible_shares(candidate)):
            placed = candidate
    return [(label, polygon) for label, polygon, _ in placed]


def _visible_masks(rasters: list[np.ndarray]) -> list[np.ndarray]:
    """What each raster keeps once the later ones are drawn over it."""
    covered = np.zeros_like(rasters[0])
    visible = []
    for raster in reversed(rasters):
        visible.append(raster & (1 - covered))
        covered = covered | raster
    return visible[::-1]


def _visible_shares(placed: list) -> list[float]:
    rasters = [raster for _, _, raster in placed]
    return [
        float(v.sum()) / max(1, float(r.sum()))
        for v, r in zip(_visible_masks(rasters), rasters, strict=True)
    ]


def render_image(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image and its COCO annotations (without ids)."""
    image = _background(rng, IMAGE_SIZE)
    shapes = _place_shapes(rng)
    rasters = [rasterize(polygon, IMAGE_SIZE) for _, polygon in shapes]
    annotations = []
    for (label, polygon), raster, visible in zip(
        shapes, rasters, _visible_masks(rasters), strict=True
    ):
        base = np.array(SHAPES[[s[0] for s in SHAPES].index(CLASSES[label])][2])
        color = tuple(int(v) for v in np.clip(base + rng.integers(-25, 26, 3), 0, 255))
        layer = Image.fromarray(raster * 255)
        image.paste(Image.new("RGB", image.size, color), mask=layer)
        rle = mask_utils.encode(np.asfortranarray(visible))
        if np.array_equal(visible, raster):
            segmentation: object = [[float(v) for p in polygon for v in p]]
        else:
            segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        annotations.append(
            {
                "category_id": label + 1,
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    return image, annotations


def write_sample_coco(
    root: Path, train_images: int = 400, val_images: int = 100, seed: int = 0
) -> Path:
    """Write the dataset under `root` in COCO's layout. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)
    ]
    annotation_id = 1
    for split, count in (("train", train_images), ("val", val_images)):
        image_dir = root / f"{split}2017"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for n in range(count):
            image, anns = render_image(rng)
            name = f"{split}_{n:06d}.jpg"
            image.save(image_dir / name, quality=95)
            images.append(
                {"id": n + 1, "file_name": name, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
            )
            for ann in anns:
                annotations.append({"id": annotation_id, "image_id": n + 1, **ann})
                annotation_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        body = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(body))
    return root
