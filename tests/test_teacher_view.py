"""The visual prompt lands on the right pixels at 336 px; the view geometry round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import view_geometry
from teacher.prompting.view import teacher_view

RED = (255, 0, 0)
GRAY = (122, 116, 104)


def test_pad_geometry_by_hand():
    # 64 x 32: long edge 64 -> 336 (scale 5.25), height 168, centred: 84 px of padding above.
    g = view_geometry(64, 32, 336, "pad")
    assert (g.scale_x, g.scale_y, g.offset_x, g.offset_y) == (5.25, 5.25, 0, 84)
    assert g.to_view(0, 0) == (0, 84) and g.to_view(64, 32) == (336, 252)


def test_crop_geometry_by_hand():
    # 100 x 50: short edge 50 -> 336 (6.72), width 672, centre crop drops 168 px each side.
    g = view_geometry(100, 50, 336, "crop")
    assert (g.scale_x, g.scale_y, g.offset_x, g.offset_y) == (6.72, 6.72, -168, 0)


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
@pytest.mark.parametrize("size", [(64, 64), (80, 50), (37, 91)])
def test_geometry_round_trips(mode, size):
    g = view_geometry(*size, 336, mode)
    for x, y in [(0.0, 0.0), (size[0], size[1]), (12.5, 7.25)]:
        assert np.allclose(g.to_original(*g.to_view(x, y)), (x, y))
    # Cell (r, c) of the 24 x 24 grid covers view pixels [14c, 14c+14) x [14r, 14r+14).
    x0, y0, x1, y1 = g.cell_to_original(3, 5, 24)
    assert np.allclose(g.to_view(x0, y0), (70, 42)) and np.allclose(g.to_view(x1, y1), (84, 56))


def test_box_outline_lands_on_view_pixels():
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    box = (8, 4, 40, 20)  # original pixels, half-open
    view, g = teacher_view(image, [box], 336, "pad", GRAY, RED, 3)
    pixels = np.asarray(view)
    assert view.size == (336, 336)
    # By hand: x * 5.25, y * 5.25 + 84 -> view box [42, 105) x [105, 189).
    assert g.box_to_view(box) == (42.0, 105.0, 210.0, 189.0)
    red = (pixels == RED).all(-1)
    ys, xs = np.nonzero(red)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (42, 209, 105, 188)
    # Outline of width 3, inside the box: rows 105..107 are red along the top edge, 108 is not.
    assert red[105:108, 100].all() and not red[108, 100]
    assert red[150, 42:45].all() and not red[150, 45]
    # Padding above the image keeps the pad colour; the image itself stays blue.
    assert tuple(pixels[10, 10]) == GRAY and tuple(pixels[150, 100]) == (0, 0, 255)


def test_no_boxes_or_zero_width_draws_nothing():
    image = Image.new("RGB", (50, 50), (0, 0, 255))
    for boxes, width in (([], 3), ([(5, 5, 20, 20)], 0)):
        view, _ = teacher_view(image, boxes, 336, "resize", GRAY, RED, width)
        assert not (np.asarray(view) == RED).all(-1).any()


def test_bad_view_mode_is_named():
    with pytest.raises(ValueError, match="view mode"):
        view_geometry(10, 10, 336, "zoom")
