"""Baseline teachers: the maps a user gets without any VLM, under the same cache contract.

- `box`: the ground-truth boxes rasterized on the teacher's grid through the view geometry (a
  cell weighs its share inside the union of the boxes), normalized to sum 1. It answers "does
  the VLM add anything beyond the box it was shown?", and it is a teacher whose maps are known
  to be right, for testing the offline pipeline. An image without boxes is an invalid row.
- `mask`: the ground-truth instance masks (the shards' COCO RLE, e.g. sample-spot's shapes)
  rasterized the same way: a cell weighs its share of area covered by the union of the masks'
  pixels (each pixel a unit square). An image without masks is an invalid row.
- `uniform`: every cell weighs its share inside the image (padding cells get nothing).

They are selected with `TeacherConfig(model="box" | "mask" | "uniform")` (`make extract TEACHER=box`),
have their own spec and so their own cache key, use LLaVA-1.5's 336 px view and 24 x 24 grid so
their entries line up cell for cell with LLaVA's, and need no weights. C_fore is the map itself
and C_back zeros, so C_VLM = relu(C_fore - C_back) / sum holds as for the VLM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from pipeline.geometry import (
    MapGeometry,
    Rect,
    box_coverage,
    image_rect,
    teacher_view_rect,
    uniform_overlap,
)
from pipeline.shards.masks import decode
from teacher.config import TeacherConfig
from teacher.results import MapResult, TeacherInput

BASELINES = ("box", "mask", "uniform")
RULES = {
    "box": "cell weight = share of the cell inside the union of the ground-truth boxes",
    "mask": "cell weight = share of the cell covered by the union of the instance masks' pixels",
    "uniform": "cell weight = share of the cell inside the image",
}
BASELINE_FORMAT = 1
VIEW_SIZE = 336  # LLaVA-1.5's input size and 24 x 24 token grid: entries align with LLaVA's
GRID = 24
NO_BOXES = "no ground-truth boxes: the box teacher has nothing to rasterize"
NO_MASKS = "no instance masks: the mask teacher has nothing to rasterize"
OUTSIDE_VIEW = "the ground-truth boxes lie outside the teacher's view"


class BaselineTeacher:
    """The duck-typed Teacher of the extraction flow (spec, grid, geometry_spec, extract)."""

    def __init__(self, cfg: TeacherConfig, vocabulary: list[str]) -> None:
        if cfg.model not in BASELINES:
            raise ValueError(f"baseline teacher must be one of {BASELINES}, got {cfg.model!r}")
        self.cfg = cfg
        self.kind = cfg.model
        self.vocabulary = list(vocabulary)
        self.image_size = VIEW_SIZE
        self.grid = GRID

    def spec(self) -> dict:
        """What changes a baseline map: which baseline, the view and the grid (no weights,
        prompt or quantization, so QUANT=... does not split the entry)."""
        return {
            "format": BASELINE_FORMAT,
            "baseline": self.kind,
            "model": f"baseline:{self.kind}",
            "rule": RULES[self.kind] + ", normalized to sum 1; c_fore = c_vlm, c_back = 0",
            "visual_prompt": {"view": self.cfg.view, "size": VIEW_SIZE},
            "grid": GRID,
        }

    def geometry_spec(self) -> MapGeometry:
        return MapGeometry(mode=self.cfg.view, size=VIEW_SIZE, grid=GRID)

    def weights_for(self, item: TeacherInput) -> tuple[np.ndarray, str]:
        """(unnormalized cell weights [G, G], reason when they cannot make a map)."""
        width, height = item.image.size
        view = teacher_view_rect(self.geometry_spec().model_dump(), width, height)
        image = image_rect(width, height)
        if self.kind == "uniform":
            return box_coverage([dataclasses.astuple(image)], view, GRID), ""
        if self.kind == "mask":
            if not item.masks:
                return np.zeros((GRID, GRID)), NO_MASKS
            union = np.logical_or.reduce([decode(rle).astype(bool) for rle in item.masks])
            weights = mask_coverage(union, view, GRID)
            return weights, "" if weights.sum() > 0 else OUTSIDE_VIEW
        if not item.boxes:
            return np.zeros((GRID, GRID)), NO_BOXES
        weights = box_coverage(item.boxes, view, GRID, clip=image)
        return weights, "" if weights.sum() > 0 else OUTSIDE_VIEW

    def extract(
        self, items: list[TeacherInput], on_images: Callable[[int], None] | None = None
    ) -> list[MapResult]:
        results = [self.extract_one(item) for item in items]
        if on_images is not None:
            on_images(len(results))
        return results

    def extract_one(self, item: TeacherInput) -> MapResult:
        weights, reason = self.weights_for(item)
        zeros = np.zeros((GRID, GRID), np.float32)
        c_vlm = (weights / weights.sum()).astype(np.float32) if not reason else zeros
        return MapResult(
            key=item.key, c_vlm=c_vlm, c_fore=c_vlm, c_back=zeros, valid=not reason,
            reason=reason, answer="", fg_correct=-1, audit=None,
        )  # fmt: skip


def mask_coverage(mask: np.ndarray, grid_rect: Rect, grid: int) -> np.ndarray:
    """[G, G] float64: the share of each grid cell's area covered by the mask's pixels.

    `mask` is [H, W] over the original image (pixel (y, x) is the unit square [x, x+1) x
    [y, y+1)); `grid_rect` is where the G x G grid lies in those coordinates. Exact: one axis
    at a time, each pixel's share of each cell's length (uniform_overlap), as box_coverage.
    """
    height, width = mask.shape
    # [W, G]: share of grid column c's width that pixel column x covers (and so for rows)
    fx = uniform_overlap(grid_rect.x0, grid_rect.x1, grid, 0.0, float(width), width)
    fy = uniform_overlap(grid_rect.y0, grid_rect.y1, grid, 0.0, float(height), height)
    return np.einsum("yx,yr,xc->rc", mask.astype(np.float64), fy, fx)  # [G, G]
