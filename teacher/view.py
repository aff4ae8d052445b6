"""The teacher's view of an image: square canvas at its input size, boxes drawn on it.

LLaVA's image processor would resize/crop again; we build the final 336 x 336 view ourselves so
the boxes are drawn at the resolution the model sees and the geometry between the original
image and the 24 x 24 token grid is known exactly (ViewGeometry).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw
from pydantic import BaseModel

Box = tuple[float, float, float, float]


class ViewGeometry(BaseModel):
    """view = original * scale + offset (per axis); the view is `size` x `size` pixels.

    "pad": uniform scale, image centred, borders padded; "crop": shortest edge to `size`,
    centre crop (offset < 0 on the long axis); "resize": stretch (scale_x != scale_y).
    """

    mode: Literal["pad", "crop", "resize"]
    size: int
    original_width: int
    original_height: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_view(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale_x + self.offset_x, y * self.scale_y + self.offset_y

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y

    def box_to_view(self, box: Box) -> Box:
        x0, y0 = self.to_view(box[0], box[1])
        x1, y1 = self.to_view(box[2], box[3])
        return x0, y0, x1, y1

    def cell_to_original(self, row: int, col: int, grid: int) -> Box:
        """Original-image box [x0, y0, x1, y1] of grid cell (row, col); may leave the image."""
        cell = self.size / grid
        x0, y0 = self.to_original(col * cell, row * cell)
        x1, y1 = self.to_original((col + 1) * cell, (row + 1) * cell)
        return x0, y0, x1, y1


def view_geometry(width: int, height: int, size: int, mode: str) -> ViewGeometry:
    """Integer resized size and offsets, so the geometry is exactly what render_view pastes."""
    if mode in ("pad", "crop"):
        # pad fits the long edge to `size`; crop fits the short edge and cuts the long one.
        edge = max(width, height) if mode == "pad" else min(width, height)
        new_w, new_h = max(1, round(width * size / edge)), max(1, round(height * size / edge))
        ox, oy = (size - new_w) // 2, (size - new_h) // 2
    elif mode == "resize":
        new_w, new_h, ox, oy = size, size, 0, 0
    else:
        raise ValueError(f"view mode must be pad, crop or resize, got {mode!r}")
    return ViewGeometry(
        mode=mode, size=size, original_width=width, original_height=height,
        scale_x=new_w / width, scale_y=new_h / height, offset_x=ox, offset_y=oy,
    )  # fmt: skip


def render_view(
    image: Image.Image, geometry: ViewGeometry, pad_color: tuple[int, int, int]
) -> Image.Image:
    """The size x size RGB canvas the model sees (before any box is drawn)."""
    new_w = round(geometry.original_width * geometry.scale_x)
    new_h = round(geometry.original_height * geometry.scale_y)
    resized = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (geometry.size, geometry.size), pad_color)
    # A negative offset (crop mode) makes paste cut the long edge: a centre crop.
    canvas.paste(resized, (int(geometry.offset_x), int(geometry.offset_y)))
    return canvas


def draw_boxes(
    view: Image.Image,
    geometry: ViewGeometry,
    boxes: Sequence[Box],
    color: tuple[int, int, int],
    width: int,
) -> Image.Image:
    """Outline each box (original pixels) at view resolution; the outline lies inside the box."""
    if width <= 0 or not boxes:
        return view
    out = view.copy()
    draw = ImageDraw.Draw(out)
    for box in boxes:
        x0, y0, x1, y1 = geometry.box_to_view(box)
        # Boxes are half-open [x0, x1) in pixels; PIL's rectangle includes its end coordinate.
        draw.rectangle(
            [round(x0), round(y0), round(x1) - 1, round(y1) - 1], outline=color, width=width
        )
    return out


def teacher_view(
    image: Image.Image,
    boxes: Sequence[Box],
    size: int,
    mode: str,
    pad_color: tuple[int, int, int],
    box_color: tuple[int, int, int],
    box_width: int,
) -> tuple[Image.Image, ViewGeometry]:
    geometry = view_geometry(image.width, image.height, size, mode)
    view = render_view(image, geometry, pad_color)
    return draw_boxes(view, geometry, boxes, box_color, box_width), geometry
