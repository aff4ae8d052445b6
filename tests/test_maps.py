"""Map transforms move C_VLM with the image: checked against maps built from transformed boxes.

References here never call the code under test: box maps are computed cell by cell from
rectangle intersections, or rasterized at pixel resolution and pooled with torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from student.maps import (
    PairedTransform,
    Rect,
    center_crop_rect,
    rects_array,
    teacher_view_rect,
    transform_maps,
)

torch.set_num_threads(1)


def transform_map(
    c_vlm: np.ndarray,
    valid: bool,
    view_rect: Rect,
    crop_rect: Rect,
    out_grid: int,
    flip: bool = False,
) -> tuple[np.ndarray, bool]:
    """One row through the batched `transform_maps` (the loader moves whole batches)."""
    maps, kept = transform_maps(
        np.asarray(c_vlm)[None],
        np.array([valid]),
        rects_array([view_rect]),
        rects_array([crop_rect]),
        np.array([flip]),
        out_grid,
    )
    return maps[0], bool(kept[0])


def paired(transform: PairedTransform, image: Image.Image, c_vlm, valid: bool, view_rect: Rect):
    """(image [3, S, S], map [g, g], map valid): one sample's image and map on the same view."""
    tensor, crop, flip = transform.view_image(image)
    student_map, map_valid = transform_map(c_vlm, valid, view_rect, crop, transform.grid, flip)
    return tensor, student_map, map_valid


def box_density_map(box: tuple[float, float, float, float], region, grid: int) -> np.ndarray:
    """Reference: share of a uniform box's area in each cell of a grid over `region`."""
    x0, y0, x1, y1 = box
    rx0, ry0, rx1, ry1 = region
    cw, ch = (rx1 - rx0) / grid, (ry1 - ry0) / grid
    out = np.zeros((grid, grid))
    for row in range(grid):
        for col in range(grid):
            cx0, cy0 = rx0 + col * cw, ry0 + row * ch
            w = max(0.0, min(x1, cx0 + cw) - max(x0, cx0))
            h = max(0.0, min(y1, cy0 + ch) - max(y0, cy0))
            out[row, col] = w * h
    return out / out.sum()


def transformed_box(box, crop: tuple[int, int, int, int], flip: bool, out_size: float):
    """The box after cropping (top, left, h, w), scaling to out_size and maybe flipping."""
    top, left, h, w = crop
    x0, y0 = max(box[0], left), max(box[1], top)
    x1, y1 = min(box[2], left + w), min(box[3], top + h)
    sx, sy = out_size / w, out_size / h
    x0, x1 = (x0 - left) * sx, (x1 - left) * sx
    y0, y1 = (y0 - top) * sy, (y1 - top) * sy
    if flip:
        x0, x1 = out_size - x1, out_size - x0
    return x0, y0, x1, y1


@pytest.mark.parametrize(
    ("crop", "flip"),
    [
        ((0, 0, 96, 96), False),  # identity
        ((0, 0, 96, 96), True),  # flip only
        ((10, 7, 60, 50), False),  # crop only, non-square, edges off the teacher grid
        ((13, 29, 55, 67), True),  # crop and flip
        ((0, 40, 96, 56), True),
    ],
)
def test_crop_and_flip_match_map_of_transformed_box(crop, flip):
    # 96x96 image, teacher grid 24 -> 4 px cells; the box lies on cell edges, so the
    # teacher map is exactly "uniform in the box" and the student map must be exactly
    # "uniform in the transformed box".
    box = (20.0, 32.0, 68.0, 80.0)
    teacher_map = box_density_map(box, (0, 0, 96, 96), 24).astype(np.float32)
    view = teacher_view_rect({"mode": "resize"}, 96, 96)

    student, valid = transform_map(teacher_map, True, view, Rect.from_crop(*crop), 14, flip)

    expected = box_density_map(transformed_box(box, crop, flip, 14.0), (0, 0, 14, 14), 14)
    assert valid
    assert student.shape == (14, 14)
    np.testing.assert_allclose(student, expected, atol=1e-6)
    assert student.sum() == pytest.approx(1.0, abs=1e-6)


def test_padded_teacher_view_on_wide_image():
    # 128x64 image padded to a 128 square: the teacher grid (16, 8 px cells) starts 32 px
    # above the image. A box in original pixels must come back in the same place.
    width, height = 128, 64
    view = teacher_view_rect({"mode": "pad", "size": 336}, width, height)
    assert (view.x0, view.y0, view.x1, view.y1) == (0.0, -32.0, 128.0, 96.0)
    box = (16.0, 8.0, 56.0, 48.0)  # cell-aligned in the padded frame (offsets 40, 80)
    teacher_map = box_density_map(box, (0, -32, 128, 96), 16).astype(np.float32)
    crop = (4, 10, 56, 100)

    student, valid = transform_map(teacher_map, True, view, Rect.from_crop(*crop), 7, True)

    expected = box_density_map(transformed_box(box, crop, True, 7.0), (0, 0, 7, 7), 7)
    assert valid
    np.testing.assert_allclose(student, expected, atol=1e-6)


def test_matches_pixel_rasterized_map_through_torch_ops():
    # Independent path: lift the teacher map to a per-pixel density image, crop and flip it
    # as a tensor, average-pool to the student grid (crop sizes divisible by the grid).
    rng = np.random.default_rng(0)
    teacher_map = rng.random((8, 8)).astype(np.float32)
    teacher_map /= teacher_map.sum()
    density = torch.from_numpy(np.kron(teacher_map, np.ones((8, 8), np.float32)))  # [64, 64]
    top, left, h, w = 8, 12, 48, 40
    pixels = density[top : top + h, left : left + w].flip(-1)  # crop, then horizontal flip
    pooled = torch.nn.functional.adaptive_avg_pool2d(pixels[None, None], 4)[0, 0]
    expected = (pooled / pooled.sum()).numpy()

    student, valid = transform_map(
        teacher_map, True, Rect(0, 0, 64, 64), Rect.from_crop(top, left, h, w), 4, flip=True
    )
    assert valid
    np.testing.assert_allclose(student, expected, atol=1e-6)


def test_resampling_keeps_sum_at_one_for_random_maps_and_crops():
    rng = np.random.default_rng(1)
    for _ in range(50):
        teacher_map = rng.random((24, 24)).astype(np.float16)  # the cache stores float16
        teacher_map /= teacher_map.sum()
        top, left = rng.integers(0, 40, size=2)
        h, w = rng.integers(10, 60 - max(top, left) + 10, size=2)
        out, valid = transform_map(
            teacher_map,
            True,
            Rect(0, 0, 80, 80),
            Rect.from_crop(top, left, h, w),
            14,
            flip=bool(rng.integers(2)),
        )
        assert valid
        assert out.dtype == np.float32
        assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
        assert (out >= 0).all()


def test_crop_without_mass_is_invalid_zeros_not_nan():
    teacher_map = box_density_map((0, 0, 16, 16), (0, 0, 96, 96), 24).astype(np.float32)
    out, valid = transform_map(
        teacher_map, True, Rect(0, 0, 96, 96), Rect.from_crop(50, 50, 40, 40), 14
    )
    assert not valid
    assert not np.isnan(out).any()
    assert (out == 0).all()


def test_invalid_cache_row_stays_invalid():
    out, valid = transform_map(
        np.zeros((24, 24), np.float32), False, Rect(0, 0, 10, 10), Rect(0, 0, 10, 10), 14
    )
    assert not valid and out.shape == (14, 14) and (out == 0).all()


@pytest.mark.parametrize(
    ("geometry", "size", "expected"),
    [
        # long edge 100 -> 50 px view, short edge 30 px pasted 10 px down: 20 original px
        ({"mode": "pad", "size": 50}, (100, 60), (0, -20, 100, 80)),
        # (100 - 61) // 2 = 19 px of padding on the left at scale 1
        ({"mode": "pad", "size": 100}, (61, 100), (-19, 0, 81, 100)),
        # 60 * 336 / 100 = 201.6 -> 202 px pasted (336 - 202) // 2 = 67 px down, 60/202 px each
        ({"mode": "pad", "size": 336}, (100, 60), (0, -67 * 60 / 202, 100, 269 * 60 / 202)),
        # short edge 60 -> 30 px, long edge 50 px cut by 10 view px = 20 original px each side
        ({"mode": "crop", "size": 30}, (100, 60), (20, 0, 80, 60)),
        ({"mode": "resize", "size": 336}, (100, 60), (0, 0, 100, 60)),
    ],
)
def test_teacher_view_rect_by_mode(geometry, size, expected):
    rect = teacher_view_rect(geometry, *size)
    np.testing.assert_allclose((rect.x0, rect.y0, rect.x1, rect.y1), expected, atol=1e-9)


def test_full_teacher_view_geometry_record_is_accepted():
    # The teacher's per-image ViewGeometry dump: extra fields are fine, size and mode drive it.
    record = {
        "mode": "pad", "size": 50, "original_width": 100, "original_height": 60,
        "scale_x": 0.5, "scale_y": 0.5, "offset_x": 0.0, "offset_y": 10.0,
    }  # fmt: skip
    rect = teacher_view_rect(record, 100, 60)
    assert (rect.x0, rect.y0, rect.x1, rect.y1) == (0, -20, 100, 80)


def test_view_geometry_without_size_is_a_clear_error():
    with pytest.raises(ValueError, match="'size'"):
        teacher_view_rect({"mode": "pad"}, 10, 10)


def test_unknown_view_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="mode 'letterbox'"):
        teacher_view_rect({"mode": "letterbox"}, 10, 10)


def test_center_crop_rect():
    rect = center_crop_rect(100, 60, 0.5)
    assert (rect.x0, rect.y0, rect.x1, rect.y1) == (35, 15, 65, 45)


def _bright_box_image(size: int, box) -> Image.Image:
    pixels = np.zeros((size, size, 3), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels)


def _centroid(weights: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(weights.shape)
    total = weights.sum()
    return np.array([(rows * weights).sum() / total, (cols * weights).sum() / total])


def test_paired_transform_moves_map_with_image_pixels():
    # A white box on black; the teacher map is uniform on the same box. After a random crop
    # and flip, the map's centroid must sit where the image's bright pixels are.
    torch.manual_seed(0)
    box = (24, 8, 56, 40)  # 4 px cells of a 24 grid over 96 px
    image = _bright_box_image(96, box)
    teacher_map = box_density_map(box, (0, 0, 96, 96), 24).astype(np.float32)
    transform = PairedTransform(
        img_size=64, patch_size=8, mean=[0, 0, 0], std=[1, 1, 1], train=True, scale=(0.5, 1.0)
    )
    flips = 0
    for _ in range(20):
        crop, flip = transform.sample_view(image)
        flips += flip
        tensor = transform.apply_image(image, crop, flip)
        student_map, valid = transform_map(teacher_map, True, Rect(0, 0, 96, 96), crop, 8, flip)
        brightness = torch.nn.functional.adaptive_avg_pool2d(tensor.mean(0)[None], 8)[0].numpy()
        if not valid:
            assert brightness.max() < 0.01  # the crop missed the box in the image too
            continue
        np.testing.assert_allclose(_centroid(student_map), _centroid(brightness), atol=0.25)
    assert 0 < flips < 20  # both branches were exercised


def test_paired_transform_eval_is_deterministic_and_shapes():
    image = _bright_box_image(64, (8, 8, 40, 40))
    teacher_map = box_density_map((8, 8, 40, 40), (0, 0, 64, 64), 16).astype(np.float32)
    transform = PairedTransform(32, 8, [0.5] * 3, [0.5] * 3, train=False)
    first = paired(transform, image, teacher_map, True, Rect(0, 0, 64, 64))
    second = paired(transform, image, teacher_map, True, Rect(0, 0, 64, 64))
    assert first[0].shape == (3, 32, 32)
    assert first[1].shape == (4, 4)
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    expected = box_density_map((2, 2, 10, 10), (0, 0, 16, 16), 4)  # whole image, no flip
    np.testing.assert_allclose(first[1], expected, atol=1e-6)
    # normalized with mean 0.5 / std 0.5: black -> -1, white -> 1
    assert first[0].min().item() == pytest.approx(-1.0)
    assert first[0].max().item() == pytest.approx(1.0)


def test_image_size_must_divide_into_patches():
    with pytest.raises(ValueError, match="patch_size"):
        PairedTransform(30, 8, [0] * 3, [1] * 3, train=False)


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_view_rect_agrees_with_the_teachers_own_geometry(mode):
    # Contract check: the grid the student places is the grid the teacher computed its maps on
    # (pipeline/geometry.py's ViewGeometry maps view pixels back to original pixels).
    from pipeline.geometry import view_geometry

    for width, height, size in [(64, 64, 336), (500, 375, 336), (61, 100, 336), (333, 17, 224)]:
        theirs = view_geometry(width, height, size, mode)
        x0, y0 = theirs.to_original(0, 0)
        x1, y1 = theirs.to_original(size, size)
        # the manifest's form (teacher.geometry_spec()) and a full per-image record
        for geometry in ({"mode": mode, "size": size, "grid": 24}, theirs.model_dump()):
            ours = teacher_view_rect(geometry, width, height)
            np.testing.assert_allclose((ours.x0, ours.y0, ours.x1, ours.y1), (x0, y0, x1, y1))


def test_batched_transform_equals_one_row_at_a_time():
    rng = np.random.default_rng(3)
    size = 12
    c_vlm = rng.random((size, 24, 24)).astype(np.float16)
    c_vlm /= c_vlm.sum(axis=(1, 2), keepdims=True)
    valid = rng.random(size) > 0.2
    flips = rng.random(size) > 0.5
    views, crops = [], []
    for _ in range(size):
        w, h = rng.integers(20, 120, size=2)
        views.append(teacher_view_rect({"mode": "pad", "size": 336}, int(w), int(h)))
        ch, cw = rng.integers(1, h + 1), rng.integers(1, w + 1)
        crops.append(
            Rect.from_crop(rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1), ch, cw)
        )
    crops[0] = Rect(0, 0, 1, 1)  # a sliver that may keep no mass

    maps, kept = transform_maps(
        c_vlm, valid, rects_array(views), rects_array(crops), flips, out_grid=7
    )

    assert maps.shape == (size, 7, 7) and maps.dtype == np.float32 and kept.shape == (size,)
    for row in range(size):
        single, ok = transform_map(
            c_vlm[row], bool(valid[row]), views[row], crops[row], 7, bool(flips[row])
        )
        assert ok == kept[row]
        np.testing.assert_allclose(maps[row], single, atol=1e-7)
    assert not np.isnan(maps).any()
    np.testing.assert_allclose(maps[kept].sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert (maps[~kept] == 0).all()
