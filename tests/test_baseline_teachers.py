"""Baseline teachers: the box teacher's maps against boxes rasterized here at pixel level, the
uniform teacher, the no-box row, their cache keys, and the cache contract of their rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from report_fixtures import SAMPLES, box_entry, make_shards

from pipeline.cache import CacheSpec, cache_key
from pipeline.cache.verify import verify_entry
from pipeline.geometry import view_geometry
from teacher import TeacherConfig, TeacherInput, describe_teacher, load_teacher
from teacher.baselines import NO_BOXES

SUPERSAMPLE = 4  # view pixels are cut into 4 x 4 sub-pixels for the reference


def reference_box_map(width, height, boxes, mode, size=336, grid=24) -> np.ndarray:
    """Boxes drawn on the teacher's view canvas (teacher/prompting/view.py's ViewGeometry), kept where the
    image was pasted, average-pooled to the grid, normalized."""
    g = view_geometry(width, height, size, mode)
    n = size * SUPERSAMPLE
    centres = (np.arange(n) + 0.5) / SUPERSAMPLE  # view pixels
    # the pasted image's extent on the canvas
    img_x0, img_y0 = g.to_view(0, 0)
    img_x1, img_y1 = g.to_view(width, height)
    in_x = (centres >= img_x0) & (centres < img_x1)
    in_y = (centres >= img_y0) & (centres < img_y1)
    mask = np.zeros((n, n), bool)
    for box in boxes:
        x0, y0, x1, y1 = g.box_to_view(box)
        mask |= ((centres >= y0) & (centres < y1) & in_y)[:, None] & (
            (centres >= x0) & (centres < x1) & in_x
        )[None, :]
    cells = mask.reshape(grid, n // grid, grid, n // grid).mean(axis=(1, 3))
    return cells / cells.sum()


def item(i: int, width: int, height: int, boxes) -> TeacherInput:
    image = Image.new("RGB", (width, height), (100, 50, 20))
    return TeacherInput(f"k{i}", image, list(boxes), "cat", 0)


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_box_teacher_maps_match_boxes_rasterized_independently(mode: str) -> None:
    teacher = load_teacher(TeacherConfig(model="box", view=mode), vocabulary=["cat"])
    for i, (w, h, boxes, _) in enumerate(SAMPLES):
        if not boxes:
            continue
        result = teacher.extract([item(i, w, h, boxes)])[0]
        assert result.valid and result.reason == ""
        np.testing.assert_allclose(result.c_vlm.sum(), 1.0, atol=1e-5)
        expected = reference_box_map(w, h, boxes, mode)
        np.testing.assert_allclose(result.c_vlm, expected, atol=2e-3)
        np.testing.assert_array_equal(result.c_back, 0)


def test_image_without_boxes_is_an_invalid_row_with_its_reason(tmp_path) -> None:
    shard_dir, index = make_shards(tmp_path)
    entry = box_entry(str(tmp_path / "cache"), shard_dir, index)
    assert verify_entry(entry) == []  # the cache contract holds on every row
    no_box = next(i for i, s in enumerate(SAMPLES) if not s[2])
    rows = {}
    for shard in index.shards:
        maps = entry.read_shard(shard.name)
        rows.update(
            {k: (maps.valid[j], maps.reason[j], maps.c_vlm[j]) for j, k in enumerate(maps.keys)}
        )
    valid, reason, c_vlm = rows[f"s{no_box}"]
    assert not valid and reason == NO_BOXES and not np.asarray(c_vlm).any()
    assert all(v for k, (v, _, _) in rows.items() if k != f"s{no_box}")


def test_uniform_teacher_spreads_over_the_image_not_the_padding() -> None:
    teacher = load_teacher(TeacherConfig(model="uniform", view="pad"), vocabulary=["cat"])
    # 48 x 24 padded to a square: the image fills rows 6..17 of the 24 x 24 grid exactly.
    result = teacher.extract([item(0, 48, 24, [])])[0]
    assert result.valid
    expected = np.zeros((24, 24))
    expected[6:18] = 1 / (12 * 24)
    np.testing.assert_allclose(result.c_vlm, expected, atol=1e-6)


def test_baselines_are_content_addressed_by_their_own_spec() -> None:
    def key(**cfg) -> str:
        spec = describe_teacher(TeacherConfig(**cfg), vocabulary=["cat", "dog"]).spec()
        return cache_key(CacheSpec(dataset="d", split="s", dataset_fingerprint="f", teacher=spec))

    box, uniform = key(model="box"), key(model="uniform")
    assert box != uniform
    assert key(model="box", view="crop") != box  # the view changes the maps
    assert key(model="box", quant="none", dtype="float32") == box  # no weights: no quantization
