"""Cosine of C_VFM, C_VLM and C_AGT to C_HUM, computed here by hand; the annotation file; the
box mask standing in (and named) when there is none."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.geometry import Rect, image_rect
from pipeline.shards.records import SampleRecord
from student.human_alignment import (
    BOX_STAND_IN,
    HUMAN_NAME,
    HumanAlignment,
    human_on_crop,
    load_human_maps,
)


def record(width: int, height: int, boxes) -> SampleRecord:
    return SampleRecord(label=0, class_name="cat", boxes=boxes, width=width, height=height,
                        source="x")  # fmt: skip


def test_cosines_to_human_maps_by_hand(tmp_path) -> None:
    path = tmp_path / "human.json"
    human = {"a": [[1.0, 0.5], [0.0, 0.0]], "c": [[1.0, 0.5], [0.0, 0.0]]}  # "b": not annotated
    path.write_text(json.dumps({"format": "lfi-human-maps/1", "maps": human}))
    records = {k: record(20, 20, [[0, 0, 10, 10]]) for k in "abc"}
    meter = HumanAlignment(records, grid=2, crop_fraction=1.0, human=load_human_maps(path))
    # Two blocks, three images, 4 patches each.
    vfm = torch.tensor([[[0, 0, 0, 1.0]] * 3, [[1.0, 0, 0, 0]] * 3])  # [L=2, B=3, P=4]
    agt = torch.tensor([[[1.0, 1, 0, 0]] * 3, [[1.0, 1, 0, 0]] * 3])
    c_vlm = torch.tensor([[[1.0, 0], [0, 0]]] * 3)
    batch = {"key": ["a", "b", "c"], "c_vlm": c_vlm, "map_valid": torch.tensor([True, True, False])}
    meter.update({"vfm_cls": vfm, "agt_cls": agt}, batch)
    result = meter.result()
    assert result["reference"] == HUMAN_NAME
    h = np.array([1.0, 0.5, 0, 0])
    norm_h = np.sqrt(1.25)
    last_vfm = 1 / norm_h  # [1,0,0,0] . h / |h|
    mean_vfm = 0.5 / (np.sqrt(0.5) * norm_h)  # [.5,0,0,.5]
    agt_cos = 1.5 / (np.sqrt(2) * norm_h)  # [1,1,0,0]
    expected = {
        "C_VFM last block": (last_vfm, 2),
        "C_VFM mean of blocks": (mean_vfm, 2),
        "C_AGT last block": (agt_cos, 2),
        "C_AGT mean of blocks": (agt_cos, 2),
        "C_VLM": (1 / norm_h, 1),  # image c's teacher map is invalid: left out
    }
    assert h @ h == pytest.approx(1.25)
    for name, (value, n) in expected.items():
        assert result["cosine"][name]["mean"] == pytest.approx(value), name
        assert result["cosine"][name]["n"] == n, name


def test_human_map_follows_the_evaluation_crop() -> None:
    # A 40 x 20 image annotated on 2 x 4 patches of 10 px; the centre crop keeps x in [10, 30),
    # i.e. the annotation's columns 1 and 2, which become the student's two columns.
    human = np.array([[0, 1.0, 0.5, 0], [0, 1.0, 0, 0]])
    on_crop = human_on_crop(human, image_rect(40, 20), Rect(10, 0, 30, 20), grid=2)
    expected = np.array([[1.0, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(on_crop / on_crop.max(), expected)


def test_without_annotations_the_box_mask_stands_in_and_is_named() -> None:
    # 40 x 20 image, centre crop x in [10, 30); box covers the crop's left half, top row only.
    meter = HumanAlignment({"a": record(40, 20, [[10, 0, 20, 10]])}, grid=2, crop_fraction=1.0)
    assert meter.reference == BOX_STAND_IN
    np.testing.assert_allclose(meter.reference_map("a"), [[1.0, 0], [0, 0]])
    vfm = torch.tensor([[[1.0, 1.0, 0, 0]]])  # [L=1, B=1, P=4]
    meter.update({"vfm_cls": vfm, "agt_cls": None}, {"key": ["a"]})
    result = meter.result()
    assert result["reference"] == BOX_STAND_IN
    assert result["cosine"]["C_VFM last block"]["mean"] == pytest.approx(1 / np.sqrt(2))
    assert result["cosine"]["C_AGT last block"] is None  # no interaction queries: no C_AGT


def test_bad_annotation_file_names_the_key(tmp_path) -> None:
    path = tmp_path / "human.json"
    path.write_text(json.dumps({"format": "lfi-human-maps/1", "maps": {"k7": [[0.3]]}}))
    with pytest.raises(ValueError, match="k7"):
        load_human_maps(path)
    path.write_text(json.dumps({"maps": {}}))
    with pytest.raises(ValueError, match="format"):
        load_human_maps(path)
