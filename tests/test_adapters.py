"""ImageFolder-with-domains and COCO adapters against hand-made layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.adapters import CocoAdapter, ImageFolderAdapter


def _image(path: Path, size=(20, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def test_imagefolder_domains_share_one_label_space(tmp_path: Path) -> None:
    _image(tmp_path / "photo" / "dog" / "1.jpg")
    _image(tmp_path / "photo" / "giraffe" / "2.jpg")
    _image(tmp_path / "sketch" / "dog" / "3.png")
    _image(tmp_path / "sketch" / "elephant" / "x.y.jpg")
    (tmp_path / "sketch" / "dog" / "notes.txt").write_text("not an image")

    everything = ImageFolderAdapter(tmp_path, "all").load()
    assert everything.classes == ["dog", "elephant", "giraffe"]
    by_key = {s.key: s for s in everything.samples}
    assert {k: (s.label, s.domain) for k, s in by_key.items()} == {
        "photo_dog_1": (0, "photo"),
        "photo_giraffe_2": (2, "photo"),
        "sketch_dog_3": (0, "sketch"),
        "sketch_elephant_x-y": (1, "sketch"),
    }
    sketch = ImageFolderAdapter(tmp_path, "sketch").load()
    assert sketch.classes == everything.classes
    assert {s.domain for s in sketch.samples} == {"sketch"}
    assert ImageFolderAdapter(tmp_path, "all").splits() == ["all", "photo", "sketch"]


def test_coco_boxes_labels_and_skips(tmp_path: Path) -> None:
    _image(tmp_path / "val2017" / "000000000001.jpg", (100, 80))
    _image(tmp_path / "val2017" / "000000000002.jpg", (50, 50))
    annotations = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "000000000002.jpg", "width": 50, "height": 50},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 18,
                "bbox": [10, 20, 30, 40],
                "area": 1200,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "bbox": [0, 0, 5, 5],
                "area": 25,
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": 1,
                "category_id": 3,
                "bbox": [0, 0, 99, 79],
                "area": 9000,
                "iscrowd": 1,
            },
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(annotations))

    result = CocoAdapter(tmp_path, "val").load()
    assert result.classes == ["car", "dog"]  # ordered by category id: 3, 18
    assert result.class_ids == ["3", "18"]
    [sample] = result.samples
    assert sample.key == "000000000001"
    assert sample.boxes == [(10, 20, 40, 60), (0, 0, 5, 5)]  # crowd region left out
    assert sample.box_labels == [1, 0]
    assert sample.label == 1  # the largest box is the dog
    assert [s.reason for s in result.skipped] == ["no object boxes"]
