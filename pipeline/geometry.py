"""The view geometry: where the teacher's square view (and its G x G grid) lies over an image.

Part of the cache contract (docs/design.md): the manifest's `geometry` is a `MapGeometry` (mode,
view size, grid), and the per-image placement follows from it and the image size alone. The
teacher renders its view with `view_geometry` (teacher/prompting/view.py) and the student places the cached
maps with `view_rect` (student/maps.py): one module, so the two cannot drift apart. The
map-quality report and the box teacher measure boxes against map cells with the same arithmetic
(`box_coverage`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
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


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle in original-image pixel coordinates (x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty rectangle {self}")

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @classmethod
    def from_crop(cls, top: int, left: int, height: int, width: int) -> Rect:
        """The rectangle of torchvision's crop parameters (top, left, height, width)."""
        return cls(float(left), float(top), float(left + width), float(top + height))


def teacher_view_rect(geometry: Mapping[str, Any], width: int, height: int) -> Rect:
    """Where the teacher's square view (and so its G x G grid) lies over an original image.

    `geometry` is the cache manifest's view geometry: `mode` and the view's `size` in pixels
    (a full per-image ViewGeometry works too: its extra fields are recomputed). The placement
    is pipeline/geometry.py's, the very arithmetic the teacher rendered its view with:
    - "pad": long edge fitted to `size`, centered; the grid reaches past the image on the short
      side, and those cells fall outside every crop.
    - "crop": short edge fitted to `size`, center crop; the grid covers a centered square.
    - "resize": stretched; the grid covers exactly the image.
    """
    mode = geometry.get("mode")
    if mode not in VIEW_MODES:
        raise ValueError(f"map geometry mode {mode!r} is not one of {VIEW_MODES}: {dict(geometry)}")
    size = geometry.get("size")
    if mode != "resize" and (not isinstance(size, int) or size <= 0):
        raise ValueError(
            f"map geometry needs the view's integer 'size' in pixels: {dict(geometry)}"
        )
    return Rect(*view_rect(geometry, width, height))


@functools.cache
def _steps(n: int) -> np.ndarray:
    return np.arange(n + 1, dtype=np.float64)  # [n + 1]; cached: this runs per batch


def uniform_overlap(
    source_lo: np.ndarray,
    source_hi: np.ndarray,
    n_source: int,
    target_lo: np.ndarray,
    target_hi: np.ndarray,
    n_target: int,
) -> np.ndarray:
    """[..., n_target, n_source]: the share of each source cell's length in each target cell.

    One axis of two uniform grids, for a batch of extents (`...` is the shape of the bounds).
    With target edges measured in source-cell units from the source's start (u), source cell
    k holds clip(u - k, 0, 1) of its length below u, so cell-to-cell shares are differences
    of that along the target edges.
    """
    source_lo, source_hi = np.asarray(source_lo, np.float64), np.asarray(source_hi, np.float64)
    target_lo, target_hi = np.asarray(target_lo, np.float64), np.asarray(target_hi, np.float64)
    step = ((source_hi - source_lo) / n_source)[..., None]  # [..., 1]
    edges = (target_lo[..., None] - source_lo[..., None]) / step + _steps(n_target) * (
        (target_hi - target_lo)[..., None] / (n_target * step)
    )  # [..., n_target + 1], in source cells
    covered = edges[..., :, None] - _steps(n_source)[:-1]  # [..., n_target + 1, n_source]
    np.clip(covered, 0.0, 1.0, out=covered)
    return covered[..., 1:, :] - covered[..., :-1, :]  # [..., n_target, n_source]


def box_coverage(
    boxes: Sequence[Sequence[float]], grid_rect: Rect, grid: int, clip: Rect | None = None
) -> np.ndarray:
    """[G, G] float64: the share of each grid cell's area inside the union of `boxes`.

    `boxes` are [x0, y0, x1, y1] in original pixels, `grid_rect` is where the G x G grid lies
    (teacher_view_rect, or a student crop), `clip` (usually the image) bounds the boxes first.
    Overlapping boxes count once: the plane is cut along every box edge into elementary
    rectangles, each either inside the union or not, and each covered one adds its exact
    per-cell overlap (one axis at a time, with uniform_overlap).
    """
    kept = []
    for x0, y0, x1, y1 in boxes:
        if clip is not None:
            x0, y0 = max(x0, clip.x0), max(y0, clip.y0)
            x1, y1 = min(x1, clip.x1), min(y1, clip.y1)
        if x1 > x0 and y1 > y0:
            kept.append((x0, y0, x1, y1))
    if not kept:
        return np.zeros((grid, grid), np.float64)
    b = np.array(kept, np.float64)  # [K, 4]
    xs, ys = np.unique(b[:, [0, 2]]), np.unique(b[:, [1, 3]])  # cut lines
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2  # elementary centres
    inside_x = (b[:, 0, None] <= cx) & (cx < b[:, 2, None])  # [K, Ex]
    inside_y = (b[:, 1, None] <= cy) & (cy < b[:, 3, None])  # [K, Ey]
    covered = (inside_y[:, :, None] & inside_x[:, None, :]).any(0)  # [Ey, Ex]
    fx = uniform_overlap(grid_rect.x0, grid_rect.x1, grid, xs[:-1], xs[1:], 1)[:, 0]  # [Ex, G]
    fy = uniform_overlap(grid_rect.y0, grid_rect.y1, grid, ys[:-1], ys[1:], 1)[:, 0]  # [Ey, G]
    return np.einsum("ab,ar,bc->rc", covered.astype(np.float64), fy, fx)  # [G, G]


def image_rect(width: int, height: int) -> Rect:
    return Rect(0.0, 0.0, float(width), float(height))
