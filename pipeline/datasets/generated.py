"""A small, deterministic dataset in TinyImageNet's exact layout, so every command runs offline.

Each class is one shape in its own color family on a varied background (gradient, noise,
stripes, checkerboard); the box in the annotation files is the shape's true extent, taken from
the mask the shape was drawn with.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# (name, synonyms, base RGB): names double as the vocabulary of the teacher's Prompt 1.
SHAPES: list[tuple[str, str, tuple[int, int, int]]] = [
    ("circle", "disc", (220, 40, 40)),
    ("square", "block", (40, 160, 40)),
    ("triangle", "wedge", (40, 70, 220)),
    ("star", "pentagram", (230, 200, 30)),
    ("ring", "hoop", (200, 40, 200)),
    ("cross", "plus sign", (30, 200, 200)),
    ("diamond", "rhombus", (240, 130, 20)),
    ("hexagon", "honeycomb cell", (120, 60, 20)),
    ("crescent", "moon", (250, 250, 250)),
    ("bar", "stripe", (20, 20, 20)),
]
WNID_BASE = 90000000


def wnid(label: int) -> str:
    return f"n{WNID_BASE + label}"


def _polygon(
    cx: float, cy: float, radius: float, sides: int, phase: float
) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(phase + 2 * math.pi * k / sides),
            cy + radius * math.sin(phase + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _star(cx: float, cy: float, radius: float, phase: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = phase + math.pi * k / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def draw_shape(draw: ImageDraw.ImageDraw, label: int, cx: float, cy: float, r: float, fill) -> None:
    """Draw class `label`'s shape centred at (cx, cy) with size r, in `fill`."""
    name = SHAPES[label][0]
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "square":
        draw.rectangle(box, fill=fill)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, -math.pi / 2), fill=fill)
    elif name == "star":
        draw.polygon(_star(cx, cy, r, -math.pi / 2), fill=fill)
    elif name == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif name == "cross":
        w = r / 3
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif name == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif name == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=fill)
    elif name == "crescent":
        draw.ellipse(box, fill=fill)
        draw.ellipse((cx - r * 0.4, cy - r, cx + r * 1.6, cy + r), fill=0)  # the bite
    elif name == "bar":
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)


def _background(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    kind = rng.integers(4)
    c0, c1 = rng.integers(60, 200, size=(2, 3))
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    if kind == 0:  # linear gradient
        t = (xs * rng.random() + ys * rng.random())[..., None] / 2
    elif kind == 1:  # smooth noise
        coarse = rng.random((8, 8))
        t = np.array(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        )
        t = (t / 255.0)[..., None]
    elif kind == 2:  # stripes
        period = rng.integers(6, 16)
        t = ((xs * size // period) % 2)[..., None].astype(float)
    else:  # checkerboard
        period = rng.integers(6, 16)
        t = (((xs * size // period) + (ys * size // period)) % 2)[..., None].astype(float)
    pixels = c0 * (1 - t) + c1 * t + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_cue(label: int, count: int, correlation: float | None, rng: np.random.Generator) -> int:
    """A class-correlated cue out of `count` (a background, a marker) for a class-`label`
    image: the class's own with probability `correlation`, else one of the others uniformly;
    None: uniform over all (independent of the class)."""
    if correlation is None:
        return int(rng.integers(count))
    if rng.random() < correlation:
        return label
    return int(rng.choice([c for c in range(count) if c != label]))


def render_sample(
    label: int, rng: np.random.Generator
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One image of class `label` and its true box [x0, y0, x1, y1) in pixels."""
    image = _background(rng)
    r = float(rng.uniform(9, 18))
    cx, cy = rng.uniform(r + 1, IMAGE_SIZE - r - 1, size=2)
    base = np.array(SHAPES[label][2])
    color = tuple(int(v) for v in np.clip(base + rng.integers(-25, 26, 3), 0, 255))
    return image, paste_shape(image, label, cx, cy, r, color)


def paste_shape(
    image: Image.Image, shape: int, cx: float, cy: float, r: float, color: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """Paint shape `shape` onto `image` in place; returns its true box [x0, y0, x1, y1).
    Drawn on a mask first: the box is the extent of the pixels the shape really covers."""
    mask = Image.new("L", image.size, 0)
    draw_shape(ImageDraw.Draw(mask), shape, cx, cy, r, fill=255)
    image.paste(Image.new("RGB", image.size, color), mask=mask)
    bbox = mask.getbbox()
    assert bbox is not None, "a shape always covers pixels"
    return bbox


class TinyImageNetLayout:
    """Writes generated images and their boxes in TinyImageNet's layout (what
    adapters/tinyimagenet.py reads): train/<wnid>/images + <wnid>_boxes.txt for "train",
    <split>/images + val_annotations.txt for every other split."""

    def __init__(self, root: Path, wnids: list[str], words: list[str]) -> None:
        self.root, self.wnids = root, wnids
        root.mkdir(parents=True, exist_ok=True)
        (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
        (root / "words.txt").write_text(
            "".join(f"{w}\t{t}\n" for w, t in zip(wnids, words, strict=True))
        )
        self._lines: dict[Path, list[str]] = {}

    def add(self, split: str, label: int, n: int, image: Image.Image, box: tuple[int, ...]) -> str:
        """Save sample `n` of `split` (numbered per class in train, per split elsewhere);
        returns its file name."""
        w = self.wnids[label]
        coords = "\t".join(str(v) for v in box[:4])
        if split == "train":
            folder, name = self.root / "train" / w, f"{w}_{n}.JPEG"
            listing, line = folder / f"{w}_boxes.txt", f"{name}\t{coords}\n"
        else:
            folder, name = self.root / split, f"{split}_{n}.JPEG"
            listing, line = folder / "val_annotations.txt", f"{name}\t{w}\t{coords}\n"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        image.save(folder / "images" / name, quality=92)
        self._lines.setdefault(listing, []).append(line)
        return name

    def close(self) -> None:
        """Write the box listings of everything added."""
        for listing, lines in self._lines.items():
            listing.write_text("".join(lines))


def write_sample_dataset(
    root: Path, train_per_class: int = 40, val_per_class: int = 10, seed: int = 0
) -> Path:
    """Write the dataset under `root` (TinyImageNet layout). Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    layout = TinyImageNetLayout(
        root, [wnid(i) for i in range(len(SHAPES))], [f"{a}, {b}" for a, b, _ in SHAPES]
    )
    for label in range(len(SHAPES)):
        for n in range(train_per_class):
            layout.add("train", label, n, *render_sample(label, rng))
    for n in range(val_per_class * len(SHAPES)):
        label = n % len(SHAPES)
        layout.add("val", label, n, *render_sample(label, rng))
    layout.close()
    return root
