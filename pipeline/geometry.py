"""The view geometry: where the teacher's square view (and its G x G grid) lies over an image.

Part of the cache contract (DESIGN 3.3): the manifest's `geometry` is a `MapGeometry` (mode,
view size, grid), and the per-image placement follows from it and the image size alone. The
teacher renders its view with `view_geometry` (teacher/view.py) and the student places the cached
maps with `view_rect` (student/maps.py): one module, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

Box = tuple[float, float, float, float]
ViewMode = Literal["pad", "crop", "resize"]
VIEW_MODES: tuple[str, ...] = ("pad", "crop", "resize")


class MapGeometry(BaseModel):
    """What a cache manifest stores as `geometry`: how every map of the entry lies over its image."""

    mode: ViewMode = Field(description="pad | crop | resize: how the image became the view")
    size: int = Field(gt=0, description="the view's side in pixels (336 for LLaVA-1.5)")
    grid: int | None = Field(
        None,
        gt=0,
        description="the maps' side in cells (24 for LLaVA-1.5; also the manifest's grid)",
    )


class ViewGeometry(BaseModel):
    """view = original * scale + offset (per axis); the view is `size` x `size` pixels.

    "pad": uniform scale, image centred, borders padded; "crop": shortest edge to `size`,
    centre crop (offset < 0 on the long axis); "resize": stretch (scale_x != scale_y).
    """

    mode: ViewMode
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


def view_rect(geometry: Mapping[str, Any], width: int, height: int) -> Box:
    """The original-image rectangle [x0, y0, x1, y1) the view covers, for a manifest's geometry
    (`mode` and `size`; other fields are ignored). It can reach past the image ("pad")."""
    if geometry["mode"] == "resize":
        return 0.0, 0.0, float(width), float(height)  # exact: no rounding through the scale
    placed = view_geometry(width, height, geometry["size"], geometry["mode"])
    return (*placed.to_original(0, 0), *placed.to_original(placed.size, placed.size))
