"""PASCAL VOC 2007 detection, read through torchvision's VOCDetection (its file lists and its XML
parser).

    <root>/VOCdevkit/VOC2007/ImageSets/Main/<split>.txt
    <root>/VOCdevkit/VOC2007/Annotations/<id>.xml
    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2007/SegmentationObject/<id>.png      (instance masks, a subset only)

Boxes are VOC's 1-based inclusive corners turned into [x0, y0, x1, y1) pixels; objects marked
`difficult` are left out (VOC's own evaluation ignores them), like COCO's crowd regions. Where a
SegmentationObject PNG exists, object i of the XML is the PNG's value i, so each kept box gets its
instance mask as COCO RLE; elsewhere the sample has boxes only.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import parse as parse_xml

import numpy as np
from PIL import Image

from pipeline.datasets.adapters.base import AdapterResult, DatasetAdapter, RawSample, make_key
from pipeline.shards.masks import encode
from pipeline.shards.records import MaskRLE, SkippedSample

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip


def _objects(annotation: dict) -> list[dict]:
    objects = annotation["annotation"].get("object", [])
    return objects if isinstance(objects, list) else [objects]


def instance_masks(png: Path, indices: list[int]) -> list[MaskRLE]:
    """COCO RLE of the instances `indices` (1-based XML positions) of a SegmentationObject PNG."""
    values = np.array(Image.open(png))  # [H, W] palette indices: 0 background, 255 border
    return [encode(values == index) for index in indices]


class VocAdapter(DatasetAdapter):
    def splits(self) -> list[str]:
        return ["train", "val", "trainval", "test"]

    def load(self) -> AdapterResult:
        self.check_split()
        year = str(self.options.get("year", "2007"))
        # Imported here: torchvision costs seconds, and the registry imports every adapter.
        from torchvision.datasets import VOCDetection

        try:
            voc = VOCDetection(str(self.root), year=year, image_set=self.split)
        except (RuntimeError, FileNotFoundError, ValueError) as err:
            raise FileNotFoundError(
                f"{self.root} is not a VOC layout (expected VOCdevkit/VOC{year} inside): {err}"
            ) from err
        label_of = {name: i for i, name in enumerate(VOC_CLASSES)}
        voc_root = Path(voc.images[0]).parents[1] if voc.images else self.root
        result = AdapterResult(
            list(VOC_CLASSES),
            list(VOC_CLASSES),
            [],
            annotation_files=[voc_root / "ImageSets" / "Main" / f"{self.split}.txt"],
        )
        for image_path, xml_path in zip(voc.images, voc.annotations, strict=True):
            path = Path(image_path)
            annotation = VOCDetection.parse_voc_xml(parse_xml(xml_path).getroot())
            kept = [
                (position, obj)
                for position, obj in enumerate(_objects(annotation), start=1)
                if str(obj.get("difficult", "0")) != "1" and obj.get("name") in label_of
            ]
            if not kept:
                result.skipped.append(SkippedSample(source=str(path), reason="no object boxes"))
                continue
            boxes, labels = [], []
            for _, obj in kept:
                b = obj["bndbox"]
                x0, y0 = float(b["xmin"]) - 1, float(b["ymin"]) - 1
                boxes.append((x0, y0, float(b["xmax"]), float(b["ymax"])))
                labels.append(label_of[obj["name"]])
            png = voc_root / "SegmentationObject" / f"{path.stem}.png"
            masks = instance_masks(png, [p for p, _ in kept]) if png.is_file() else []
            areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
            result.samples.append(
                RawSample(
                    key=make_key(path.stem),
                    path=path,
                    label=labels[int(np.argmax(areas))],  # the largest box, as for COCO
                    boxes=boxes,
                    box_labels=labels,
                    masks=masks,
                )
            )
        return result
