"""sample-spot (the cue apart from the object) and the mask teacher, read back with plain
json / PIL / pycocotools and checked against maps computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.datasets.spot import BAND, MARKERS, write_spot_dataset
from pipeline.shards.masks import encode
from teacher.baselines import NO_MASKS, BaselineTeacher
from teacher.config import TeacherConfig
from teacher.results import TeacherInput

PER_CLASS = {"train": 60, "val": 30, "test_shift": 60, "train_indep": 5}


@pytest.fixture(scope="module")
def spot(tmp_path_factory):
    return write_spot_dataset(tmp_path_factory.mktemp("spot"), per_class=PER_CLASS)


def read_split(root, split):
    body = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
    markers = dict(
        line.split("\t")
        for line in (root / f"{split}2017" / "markers.txt").read_text().split("\n")
        if line
    )
    return body, {name: int(m) for name, m in markers.items()}


def test_the_marker_never_touches_the_shape(spot):
    body, markers = read_split(spot, "train")
    by_image = {a["image_id"]: a for a in body["annotations"]}
    for info in body["images"][:120]:
        pixels = np.asarray(Image.open(spot / "train2017" / info["file_name"]).convert("RGB"))
        ann = by_image[info["id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 64, 64))
        mask = mask_utils.decode(rle).astype(bool)
        marker = np.all(pixels == MARKERS[markers[info["file_name"]]], axis=-1)
        assert marker.sum() >= 36  # the 8x8 marker (the shape may not hide it)
        assert not (marker & mask).any()
        ys, _ = np.nonzero(marker)
        assert ys.max() < BAND and ann["bbox"][1] >= BAND  # cue in the band, shape below it
        assert mask.sum() > 50


def test_the_marker_names_the_class_in_train_and_val_only(spot):
    for split, lo, hi in (("train", 0.88, 1.0), ("val", 0.85, 1.0), ("test_shift", 0.15, 0.36)):
        body, markers = read_split(spot, split)
        label = {a["image_id"]: a["category_id"] - 1 for a in body["annotations"]}
        agree = [markers[i["file_name"]] == label[i["id"]] for i in body["images"]]
        assert lo <= np.mean(agree) <= hi, (split, np.mean(agree))
    # In test_shift every (class, marker) pair occurs: the marker says nothing there.
    body, markers = read_split(spot, "test_shift")
    label = {a["image_id"]: a["category_id"] - 1 for a in body["annotations"]}
    pairs = {(label[i["id"]], markers[i["file_name"]]) for i in body["images"]}
    assert len(pairs) == 16


def mask_teacher() -> BaselineTeacher:
    return BaselineTeacher(TeacherConfig(model="mask"), ["thing"])


def block_mean(mask: np.ndarray, grid: int) -> np.ndarray:
    """Each grid cell's covered share: the mask upsampled to a multiple of the grid, averaged."""
    side = mask.shape[0]
    up = np.kron(mask.astype(float), np.ones((grid, grid)))  # [side*grid, side*grid]
    return up.reshape(grid, side, grid, side).mean(axis=(1, 3))


@pytest.mark.parametrize("size", [336, 64])
def test_mask_teacher_map_is_the_rasterized_mask(size):
    rng = np.random.default_rng(size)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 5 : size // 2, size // 3 : size - 7] = 1
    mask[rng.integers(size, size=40), rng.integers(size, size=40)] = 1  # scattered pixels
    image = Image.new("RGB", (size, size))
    item = TeacherInput("k", image, [(0.0, 0.0, float(size), float(size))], "thing", 0,
                        masks=[encode(mask)])  # fmt: skip
    result = mask_teacher().extract_one(item)
    expected = block_mean(mask, 24)
    assert result.valid
    np.testing.assert_allclose(result.c_vlm, expected / expected.sum(), atol=1e-6)


def test_mask_teacher_without_masks_is_an_invalid_row():
    item = TeacherInput("k", Image.new("RGB", (64, 64)), [(0.0, 0.0, 9.0, 9.0)], "thing", 0)
    result = mask_teacher().extract_one(item)
    assert not result.valid and result.reason == NO_MASKS and result.c_vlm.sum() == 0


def test_adapter_reads_every_split_with_masks(spot):
    from pipeline.datasets.registry import open_adapter
    from pipeline.shards.masks import decode

    body, _ = read_split(spot, "test_shift")
    truth = {a["image_id"]: a for a in body["annotations"]}
    names = {i["file_name"]: i["id"] for i in body["images"]}
    adapter, _ = open_adapter("sample-spot", "test_shift", spot)
    result = adapter.load()
    assert result.classes == ["circle", "square", "triangle", "cross"]
    assert len(result.samples) == len(body["images"])
    for sample in result.samples[:20]:
        ann = truth[names[sample.path.name]]
        assert sample.label == ann["category_id"] - 1
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 64, 64))
        np.testing.assert_array_equal(decode(sample.masks[0]), mask_utils.decode(rle))


def test_spot_pretraining_patch_labels_name_the_shape_below_the_band():
    from experiments.backbones.spot_backbone import render_pretraining

    _, labels, patches = render_pretraining(16, np.random.default_rng(0))
    grid = patches.reshape(16, 8, 8)
    assert (grid[:, :2] == 0).all()  # the band (top 16 of 64 px = 2 patch rows) holds no shape
    for i in range(16):
        present = set(grid[i].unique().tolist()) - {0}
        assert present == {1 + int(labels[i, 0])}  # every shape covers some patch centre
