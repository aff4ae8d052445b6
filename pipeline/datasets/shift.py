"""`sample-shift`: a generated dataset with a Waterbirds-style shortcut, where the right map is known.

Four shapes (drawn in a random colour that says nothing about the class) on one of four
background colours. In train and val the background agrees with the class with probability
`CORRELATION` (otherwise it is one of the three others, uniformly); in the `test_shift` split (and
`train_indep`, for a ceiling) the background is uniform and independent of the class. A model that reads the background scores
well on val and near chance on test_shift; the shape's box is exactly where the evidence is.

The shortcut's strength (CORRELATION, the shape size) was fixed by the ViT baseline alone before
any I-ViT ran (docs/science.md). Layout: TinyImageNet's, plus a `test_shift/`
folder laid out like `val/`, and per split a backgrounds.txt (file -> background index) so that a
user can audit the pairing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.generated import SHAPES, TinyImageNetLayout, draw_cue, paste_shape, wnid
from pipeline.errors import BadInputDataError

IMAGE_SIZE = 64
# Indices into sample_dataset.SHAPES: four shapes that stay distinct at 32 px.
SHIFT_SHAPES = [0, 1, 2, 5]  # circle, square, triangle, cross
BACKGROUNDS: list[tuple[str, tuple[int, int, int]]] = [
    ("blue water", (40, 80, 170)),
    ("green forest", (50, 140, 60)),
    ("sand", (200, 170, 100)),
    ("purple dusk", (130, 60, 140)),
]
# P(background == class's own) in train and val: fixed by the ViT baseline alone (docs/science.md): the
# smallest of 0.95 / 0.98 / 0.99 at which the shortcut costs the ViT >= 15 points of its ceiling
# on `make backbone`'s deterministic stand-in (9.3 / 11.4 / 15.3).
CORRELATION = 0.99
RADIUS = (10.0, 16.0)  # shape radius at 64 px: 5-8 px at the student's 32 px, 2-4 patches wide
# Images per class, and whether the split carries the shortcut. `train_indep` (no shortcut) is
# what the benchmark's ceiling head trains on.
SPLITS = {"train": 150, "val": 50, "test_shift": 100, "train_indep": 150}
STAMP_FILE = "GENERATOR.json"  # the settings a folder was written with (check_shift_dataset)
CORRELATED = {"train": True, "val": True, "test_shift": False, "train_indep": False}


def render_pair(
    shape: int,
    background: int | tuple[int, int, int],
    rng: np.random.Generator,
    size: int = IMAGE_SIZE,
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Shape `shape` (an index into SHAPES) on `background` (an index into BACKGROUNDS or an
    RGB colour), and its true box.

    The background is its colour with a smooth random texture and pixel noise, so that the
    colour (not an exact pixel value) is the attribute; the shape's colour is random.
    """
    rgb = BACKGROUNDS[background][1] if isinstance(background, int) else background
    base = np.array(rgb, dtype=float)
    coarse = rng.normal(0, 18, (4, 4, 3))
    texture = np.stack(
        [
            np.array(Image.fromarray(coarse[..., c].astype(np.float32)).resize((size, size), Image.BICUBIC))
            for c in range(3)
        ],
        axis=-1,
    )  # fmt: skip
    pixels = base + texture + rng.normal(0, 6, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    scale = size / IMAGE_SIZE
    r = float(rng.uniform(*RADIUS)) * scale
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    return image, paste_shape(image, shape, cx, cy, r, color)


def write_shift_dataset(
    root: Path,
    seed: int = 0,
    per_class: dict[str, int] | None = None,
    correlation: float = CORRELATION,
) -> Path:
    """Write train, val, test_shift and train_indep under `root` (TinyImageNet layout), with
    P(background == class's own) = `correlation` in train and val. Deterministic."""
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation: a probability in [0, 1], got {correlation}")
    per_class = per_class or SPLITS
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    stamp = {"generator": "sample-shift", "correlation": correlation, "seed": seed,
             "per_class": per_class}  # fmt: skip
    (root / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
    layout = TinyImageNetLayout(
        root,
        [wnid(label) for label in range(len(SHIFT_SHAPES))],
        [f"{SHAPES[s][0]}, {SHAPES[s][1]}" for s in SHIFT_SHAPES],
    )
    classes = len(SHIFT_SHAPES)
    for split, count in per_class.items():
        split_correlation = correlation if CORRELATED[split] else None
        # train: `count` per class, class by class; other splits: classes interleaved.
        order = (
            [(label, n) for label in range(classes) for n in range(count)]
            if split == "train"
            else [(n % classes, n) for n in range(count * classes)]
        )
        backgrounds = []
        for label, n in order:
            background = draw_cue(label, len(BACKGROUNDS), split_correlation, rng)
            name = layout.add(split, label, n, *render_pair(SHIFT_SHAPES[label], background, rng))
            backgrounds.append(f"{name}\t{background}\n")
        (root / split / "backgrounds.txt").write_text("".join(backgrounds))
    layout.close()
    return root


def check_shift_dataset(root: Path) -> None:
    """A sample-shift folder written with other settings than this code's defaults (an older
    correlation) would silently change the benchmark: refuse it, saying how to regenerate."""
    stamp_path = root / STAMP_FILE
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = None
    wanted = {"correlation": CORRELATION, "seed": 0, "per_class": SPLITS}
    found = {k: stamp.get(k) for k in wanted} if isinstance(stamp, dict) else None
    if found != wanted:
        raise BadInputDataError(
            f"{root} was generated with other settings than sample-shift's ({found or f'no readable {STAMP_FILE}'}, "
            f"expected {wanted}); delete it and its shards (data/shards/sample-shift) and rerun: "
            "it is regenerated deterministically"
        )
