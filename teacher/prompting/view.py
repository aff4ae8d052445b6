"""The teacher's view of an image: square canvas at its input size, boxes drawn on it.

LLaVA's image processor would resize/crop again; we build the final 336 x 336 view ourselves so
the boxes are drawn at the resolution the model sees and the geometry between the original
image and the 24 x 24 token grid is known exactly (pipeline/geometry.py, shared with the student).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from pipeline.geometry import Box, ViewGeometry, view_geometry


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
