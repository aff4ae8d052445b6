"""Map geometry: move a cached C_VLM map with the image's geometric augmentation (docs/maps.md).

The cache holds C_VLM on the teacher's G x G grid over the teacher's *view* of the image (the
original image padded to a square, resized, or center-cropped: the manifest's `geometry`). The
student sees a crop of the original image, maybe flipped, resized to img_size, and needs the map
on its own g x g patch grid over exactly those pixels.

A C_VLM cell is a constant density over its rectangle, so the mass that lands in a student cell is
the teacher cell's mass times the fraction of its area inside the student cell. Both grids are
axis-aligned, so that fraction factorizes into an x part and a y part and the whole resampling is
`Fy @ C @ Fx^T`. This is exact area resampling (what rasterizing the map at pixel resolution,
cropping and average-pooling approximates) at O(g * G) cost; the loader runs it for a whole batch
at once in its workers (`transform_maps`), since per-sample numpy calls cost more than the math.

The image side uses torchvision: RandomResizedCrop's own parameter sampler, then its resize,
flip and normalize kernels, on the same rectangle the map is moved with (`PairedTransform`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# The geometry is part of the cache contract (pipeline/geometry.py), shared with the teacher.
from pipeline.geometry import Rect, teacher_view_rect, uniform_overlap

# A crop that keeps less than this share of the teacher's mass yields a map made of rounding
# slivers, not signal: the row is marked invalid instead of renormalizing noise up to 1.
MIN_KEPT_MASS = 1e-3


def check_view_geometry(geometry: Any, where: str) -> None:
    """Fail early (in the main process, naming the file) if `geometry` cannot place a map."""
    if not isinstance(geometry, Mapping):
        raise ValueError(
            f"{where}: 'geometry' must be an object with mode and size, got {geometry!r}"
        )
    try:
        teacher_view_rect(geometry, 1, 1)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def center_crop_rect(width: int, height: int, crop_fraction: float = 1.0) -> Rect:
    """The evaluation view: the centered square of side crop_fraction * min(w, h).

    Equal to "resize the short side to S / crop_fraction, then center-crop S" (timm's eval
    transform), expressed in original coordinates so the map follows the same rectangle.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    side = max(1, round(min(width, height) * crop_fraction))
    left, top = (width - side) // 2, (height - side) // 2
    return Rect.from_crop(top, left, side, side)


def rects_array(rects: Sequence[Rect]) -> np.ndarray:
    """[B, 4] (x0, y0, x1, y1) rows."""
    return np.array([(r.x0, r.y0, r.x1, r.y1) for r in rects], dtype=np.float64).reshape(-1, 4)


def transform_maps(
    c_vlm: np.ndarray,
    valid: np.ndarray,
    view_rects: np.ndarray,
    crop_rects: np.ndarray,
    flips: np.ndarray,
    out_grid: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of cached C_VLM rows moved onto the student's grid after crop and flip.

    c_vlm [B, G, G] on grids tiling `view_rects` [B, 4]; `crop_rects` [B, 4] are the student
    views (x0, y0, x1, y1, original pixels), `flips` [B] mirror them after the crop. Returns
    (maps [B, g, g] float32 summing to 1, valid [B]); a row that was invalid, or whose crop
    kept too little mass, comes back as zeros with valid False (never NaN).
    One batched computation: per-sample numpy calls cost more than the arithmetic.
    """
    c_vlm = np.asarray(c_vlm)
    if c_vlm.ndim != 3 or c_vlm.shape[1] != c_vlm.shape[2]:
        raise ValueError(f"expected maps of shape [B, G, G], got {c_vlm.shape}")
    grid = c_vlm.shape[1]
    fy = uniform_overlap(
        view_rects[:, 1], view_rects[:, 3], grid, crop_rects[:, 1], crop_rects[:, 3], out_grid
    )  # [B, g, G]
    fx = uniform_overlap(
        view_rects[:, 0], view_rects[:, 2], grid, crop_rects[:, 0], crop_rects[:, 2], out_grid
    )  # [B, g, G]
    # a flip after the crop: output column j takes what column g-1-j would have had
    fx = np.where(np.asarray(flips, bool)[:, None, None], fx[:, ::-1], fx)  # [B, g, G]
    mass = fy @ c_vlm.astype(np.float64) @ fx.transpose(0, 2, 1)  # [B, g, g]
    total = mass.sum(axis=(1, 2))  # [B]
    # The cache's rows sum to 1 up to float16 rounding, so "too little kept" is judged against 1.
    kept = np.asarray(valid, bool) & np.isfinite(total) & (total > MIN_KEPT_MASS)  # [B]
    scale = np.where(kept, 1.0 / np.where(kept, total, 1.0), 0.0)  # [B]
    return (mass * scale[:, None, None]).astype(np.float32), kept


class PairedTransform:
    """One geometric view of a sample, applied to the image and its map with the same parameters.

    Training: torchvision's RandomResizedCrop parameters (drawn in original-image pixels) and a
    horizontal flip; evaluation: a deterministic center crop. The image then goes through
    torchvision's kernels (resize with antialias, flip, scale, normalize), the map through
    `transform_maps` on the very same rectangle, so the two cannot drift apart.
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_p: float = 0.5,
        eval_crop_fraction: float = 1.0,
    ) -> None:
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.grid = img_size // patch_size
        self.mean, self.std = list(mean), list(std)
        self.train = train
        self.hflip_p = hflip_p
        self.eval_crop_fraction = eval_crop_fraction
        # Used only for its parameter sampler, so the crop distribution is torchvision's own.
        self._random_crop = v2.RandomResizedCrop(img_size, scale=scale, ratio=ratio)

    def sample_view(self, image: Image.Image) -> tuple[Rect, bool]:
        """The crop rectangle (original pixels) and whether to flip, for this image."""
        if not self.train:
            return center_crop_rect(image.width, image.height, self.eval_crop_fraction), False
        params = self._random_crop.make_params([image])
        flip = bool(torch.rand(()) < self.hflip_p)
        return Rect.from_crop(**params), flip

    def apply_image(self, image: Image.Image, crop: Rect, flip: bool) -> torch.Tensor:
        """[3, S, S] float image of `crop`, resized, maybe flipped, normalized."""
        out = TF.resized_crop(
            image,
            top=int(crop.y0),
            left=int(crop.x0),
            height=int(crop.height),
            width=int(crop.width),
            size=[self.img_size, self.img_size],
            antialias=True,
        )
        if flip:
            out = TF.horizontal_flip(out)
        tensor = TF.to_dtype(TF.pil_to_tensor(out), torch.float32, scale=True)  # [3, S, S]
        return TF.normalize(tensor, self.mean, self.std)

    def view_image(self, image: Image.Image) -> tuple[torch.Tensor, Rect, bool]:
        """(image [3, S, S], crop, flip): the view is returned so the map can follow it."""
        crop, flip = self.sample_view(image)
        return self.apply_image(image, crop, flip), crop, flip
