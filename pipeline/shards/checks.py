"""The bad-input policy for raw samples: repair what can be repaired honestly, else skip.

Repairs keep the sample and say what was changed (mode conversion, clipped or dropped boxes);
skips drop only that sample and say why. Neither ever stops the run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline.io import PILLOW_FORMAT_EXTENSIONS
from pipeline.shards.records import Box


class BadSample(Exception):
    """A sample that cannot be kept; the message is the reason recorded in index.json."""


@dataclass
class CheckedImage:
    data: bytes  # original bytes, or an RGB PNG re-encoding when the mode had to change
    ext: str
    width: int
    height: int
    repairs: list[str] = field(default_factory=list)


def check_image(path: Path) -> CheckedImage:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadSample(f"unreadable file: {error}") from error
    if not data:
        raise BadSample("zero-byte file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes fully: truncated files fail here, not in the teacher
            fmt, mode, size = image.format, image.mode, image.size
            converted = image.convert("RGB") if mode != "RGB" else None
    except UnidentifiedImageError as error:
        raise BadSample("not an image (Pillow cannot identify the bytes)") from error
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
        raise BadSample(f"corrupt or truncated image: {error}") from error
    if fmt not in PILLOW_FORMAT_EXTENSIONS:
        raise BadSample(f"unsupported image format {fmt}")
    if converted is None:
        return CheckedImage(data, PILLOW_FORMAT_EXTENSIONS[fmt], *size)
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")  # lossless, so the conversion is the only change
    return CheckedImage(
        buffer.getvalue(), "png", *size, repairs=[f"converted mode {mode} to RGB (stored as PNG)"]
    )


def check_boxes(
    boxes: list[Box], labels: list[int], width: int, height: int
) -> tuple[list[Box], list[int], list[str]]:
    """Clip boxes to the image; drop those with no area left. Returns boxes, labels, repairs."""
    kept, kept_labels, repairs = [], [], []
    padded_labels = labels or [-1] * len(boxes)
    for box, label in zip(boxes, padded_labels, strict=True):
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        clipped = (
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
        )
        if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
            repairs.append(f"dropped box {list(box)}: no area inside the {width}x{height} image")
            continue
        if clipped != tuple(float(v) for v in box):
            repairs.append(f"clipped box {list(box)} to {list(clipped)}")
        kept.append(clipped)
        kept_labels.append(label)
    return kept, (kept_labels if labels else []), repairs
