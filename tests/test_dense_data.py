"""Dense targets in shards: boxes with categories and instance masks, checked against
pycocotools' own reading of the raw annotations and against hand-made VOC files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.datasets.adapters import CocoAdapter, VocAdapter
from pipeline.datasets.sample_coco import CLASSES, write_sample_coco
from pipeline.shards.masks import check_dense_targets, encode
from pipeline.shards.writer import write_shards


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return write_sample_coco(tmp_path_factory.mktemp("raw") / "sample-coco", 24, 6)


def _coco(root: Path, split: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(root / "annotations" / f"instances_{split}2017.json"))


def test_sample_coco_has_several_overlapping_shapes(coco_root: Path) -> None:
    coco = _coco(coco_root, "train")
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert min(per_image) >= 2 and max(per_image) <= 4
    anns = coco.loadAnns(coco.getAnnIds())
    assert len({a["category_id"] for a in anns}) == len(CLASSES)
    assert any(isinstance(a["segmentation"], dict) for a in anns), "no shape is ever occluded"
    assert any(isinstance(a["segmentation"], list) for a in anns), "no polygon masks"
    for ann in anns:  # the box is the extent of the mask, as pycocotools decodes it
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum()


def test_masks_survive_shards_bit_exactly(coco_root: Path, tmp_path: Path) -> None:
    result = CocoAdapter(coco_root, "train").load()
    write_shards(result, tmp_path, "sample-coco", "train", shard_size=10, progress=False)
    coco = _coco(coco_root, "train")
    by_stem = {Path(i["file_name"]).stem: i for i in coco.loadImgs(coco.getImgIds())}
    names = [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))]
    seen = 0
    for sample in wds.WebDataset(str(tmp_path / "shard-{000000..000002}.tar"), shardshuffle=False):
        record = json.loads(sample["json"])  # plain json, decoded by pycocotools alone
        info = by_stem[sample["__key__"]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        assert len(record["masks"]) == len(record["boxes"]) == len(anns)
        for ann, rle, box, label in zip(
            anns, record["masks"], record["boxes"], record["box_labels"], strict=True
        ):
            stored = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert stored.dtype == np.uint8
            assert np.array_equal(stored, coco.annToMask(ann))
            x, y, w, h = ann["bbox"]
            assert box == [x, y, x + w, y + h]
            assert names[label] == coco.loadCats(ann["category_id"])[0]["name"]
        seen += 1
    assert seen == 24


def test_a_dropped_box_drops_its_mask() -> None:
    inside, outside = np.zeros((10, 20), np.uint8), np.zeros((10, 20), np.uint8)
    inside[2:5, 3:9] = 1
    boxes = [(3.0, 2.0, 9.0, 5.0), (30.0, 30.0, 40.0, 40.0)]
    kept, labels, masks, repairs = check_dense_targets(
        boxes, [1, 2], [encode(inside), encode(outside)], width=20, height=10
    )
    assert kept == [boxes[0]] and labels == [1] and len(masks) == 1
    assert np.array_equal(mask_utils.decode({**masks[0], "counts": masks[0]["counts"]}), inside)
    assert any("dropped box" in r for r in repairs)
    _, _, masks, repairs = check_dense_targets(boxes[:1], [1], [encode(np.ones((5, 5)))], 20, 10)
    assert masks == [] and "size" in repairs[0]


def _voc_layout(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages", "SegmentationObject"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("000001\n000002\n")
    objects = [
        ("dog", 0, (11, 21, 40, 50)),
        ("person", 1, (1, 1, 5, 5)),
        ("car", 0, (51, 11, 90, 30)),
    ]
    xml = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects
    )
    (voc / "Annotations" / "000001.xml").write_text(f"<annotation>{xml}</annotation>")
    only_difficult = "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>"
    (voc / "Annotations" / "000002.xml").write_text(f"<annotation>{only_difficult}</annotation>")
    for stem in ("000001", "000002"):
        Image.fromarray(np.zeros((60, 100, 3), np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
    instances = np.zeros((60, 100), np.uint8)
    instances[20:50, 10:40] = 1
    instances[0:5, 0:5] = 2
    instances[10:30, 50:90] = 3
    instances[30, 10:40] = 255  # VOC's border label belongs to no instance
    png = Image.fromarray(instances, mode="P")
    png.putpalette([v for i in range(256) for v in (i, 255 - i, i)])  # a full palette, as VOC's
    png.save(voc / "SegmentationObject" / "000001.png")
    return instances


def test_voc_adapter_boxes_masks_and_difficult(tmp_path: Path) -> None:
    instances = _voc_layout(tmp_path)
    result = VocAdapter(tmp_path, "val").load()
    assert [s.reason for s in result.skipped] == ["no object boxes"]
    (sample,) = result.samples
    assert sample.boxes == [(10.0, 20.0, 40.0, 50.0), (50.0, 10.0, 90.0, 30.0)]
    assert [result.classes[i] for i in sample.box_labels] == ["dog", "car"]
    assert result.classes[sample.label] == "dog"  # the largest box (30x30 > 40x20)
    for rle, index in zip(sample.masks, (1, 3), strict=True):
        assert np.array_equal(
            mask_utils.decode({**rle, "counts": rle["counts"].encode()}), instances == index
        )
