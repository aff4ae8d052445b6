"""Box mass, pointing, entropy and cosine against hand-made maps and boxes, in pad, crop and
resize views, with cell coverage checked against an independent pixel rasterization."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry import Rect, box_coverage, image_rect, teacher_view_rect
from pipeline.map_quality import box_mass, cosine, normalized_entropy, pointing


def one_hot(grid: int, *cells: tuple[int, int]) -> np.ndarray:
    m = np.zeros((grid, grid))
    for r, c in cells:
        m[r, c] = 1.0
    return m / m.sum()


def rasterized_coverage(boxes, grid_rect: Rect, grid: int, clip: Rect, per_cell: int = 40):
    """Reference: sample each cell at per_cell x per_cell points, count those in any box."""
    n = grid * per_cell
    xs = grid_rect.x0 + (np.arange(n) + 0.5) * grid_rect.width / n
    ys = grid_rect.y0 + (np.arange(n) + 0.5) * grid_rect.height / n
    inside = np.zeros((n, n), bool)
    for x0, y0, x1, y1 in boxes:
        x0, y0, x1, y1 = max(x0, clip.x0), max(y0, clip.y0), min(x1, clip.x1), min(y1, clip.y1)
        inside |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return inside.reshape(grid, per_cell, grid, per_cell).mean(axis=(1, 3))


def test_coverage_by_hand_in_a_resize_view() -> None:
    grid_rect = Rect(0, 0, 8, 8)  # 4 x 4 cells of 2 x 2 px
    cov = box_coverage([(1, 1, 3, 3)], grid_rect, 4)
    expected = np.zeros((4, 4))
    expected[:2, :2] = 0.25
    np.testing.assert_allclose(cov, expected)
    # Two overlapping boxes count their overlap once.
    cov = box_coverage([(0, 0, 4, 4), (2, 2, 6, 6)], grid_rect, 4)
    expected = np.zeros((4, 4))
    expected[:2, :2] = 1
    expected[1:3, 1:3] = 1
    np.testing.assert_allclose(cov, expected)


def test_coverage_matches_an_independent_rasterization() -> None:
    rng = np.random.default_rng(0)
    for mode in ("pad", "crop", "resize"):
        width, height = 53, 31
        view = teacher_view_rect({"mode": mode, "size": 336}, width, height)
        boxes = []
        for _ in range(3):
            x0, y0 = rng.uniform(0, width - 5), rng.uniform(0, height - 5)
            boxes.append((x0, y0, x0 + rng.uniform(2, 30), y0 + rng.uniform(2, 20)))
        image = image_rect(width, height)
        cov = box_coverage(boxes, view, 6, clip=image)
        np.testing.assert_allclose(cov, rasterized_coverage(boxes, view, 6, image), atol=0.03)


def test_pad_view_box_mass_and_pointing() -> None:
    # 40 x 20 image padded to a square: the grid spans y in [-10, 30); 4 x 4 cells of 10 px,
    # rows 0 and 3 are padding.
    view = teacher_view_rect({"mode": "pad", "size": 336}, 40, 20)
    assert (view.x0, view.y0, view.x1, view.y1) == pytest.approx((0, -10, 40, 30))
    cov = box_coverage([(0, 0, 10, 10)], view, 4, clip=image_rect(40, 20))
    expected = np.zeros((4, 4))
    expected[1, 0] = 1.0
    np.testing.assert_allclose(cov, expected)
    maps = np.stack([one_hot(4, (1, 0)), one_hot(4, (1, 0), (2, 3)), np.ones((4, 4))])
    covs = np.stack([cov] * 3)
    np.testing.assert_allclose(box_mass(maps, covs), [1.0, 0.5, 1 / 16])
    # The peak of the second map is a tie between a box cell and a background cell.
    np.testing.assert_allclose(pointing(maps, covs), [1.0, 0.5, 1 / 16])
    # A map uniform over the image (padding excluded): box mass = box area / image area.
    uniform = box_coverage([(0, 0, 40, 20)], view, 4)
    assert box_mass(uniform[None], cov[None])[0] == pytest.approx(100 / 800)
    assert pointing(uniform[None], cov[None])[0] == pytest.approx(1 / 8)


def test_crop_view_counts_a_cell_by_its_overlap_fraction() -> None:
    # 40 x 20 image, short edge fitted and centre-cropped: the grid spans x in [10, 30);
    # 4 x 4 cells of 5 x 5 px. The box reaches 2 px into cell (0, 0) and nowhere else.
    view = teacher_view_rect({"mode": "crop", "size": 336}, 40, 20)
    assert (view.x0, view.y0, view.x1, view.y1) == pytest.approx((10, 0, 30, 20))
    cov = box_coverage([(0, 0, 12, 5)], view, 4, clip=image_rect(40, 20))
    expected = np.zeros((4, 4))
    expected[0, 0] = 0.4
    np.testing.assert_allclose(cov, expected)
    maps = np.stack([one_hot(4, (0, 0)), one_hot(4, (3, 3))])
    np.testing.assert_allclose(box_mass(maps, np.stack([cov, cov])), [0.4, 0.0])
    np.testing.assert_allclose(pointing(maps, np.stack([cov, cov])), [0.4, 0.0])


def test_unnormalized_maps_and_empty_maps() -> None:
    cov = np.zeros((1, 2, 2))
    cov[0, 0, 0] = 1.0
    raw = np.array([[[3.0, 1.0], [0.0, 0.0]]])  # raw C_fore-like values: normalized inside
    assert box_mass(raw, cov)[0] == pytest.approx(0.75)
    assert np.isnan(box_mass(np.zeros((1, 2, 2)), cov)[0])
    assert np.isnan(pointing(np.zeros((1, 2, 2)), cov)[0])


def test_normalized_entropy_by_hand() -> None:
    maps = np.stack([np.ones((4, 4)), one_hot(4, (2, 2)), one_hot(4, (0, 0), (3, 3))])
    np.testing.assert_allclose(normalized_entropy(maps), [1.0, 0.0, np.log(2) / np.log(16)])


def test_cosine_by_hand() -> None:
    a = np.array([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 2.0], [0.0, 0.0]]])
    b = np.array([[[1.0, 1.0], [0.0, 0.0]], [[2.0, 4.0], [0.0, 0.0]]])
    # row 0: dot 1, norms sqrt2 * sqrt2 -> 0.5; row 1: parallel -> 1
    np.testing.assert_allclose(cosine(a, b), [0.5, 1.0])
    assert np.isnan(cosine(np.zeros((1, 2, 2)), b[:1])[0])
