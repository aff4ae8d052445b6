"""COCO detection JSON (through pycocotools).

    <root>/annotations/instances_<split>2017.json
    <root>/<split>2017/*.jpg

Boxes are COCO's [x, y, w, h] turned into [x0, y0, x1, y1]; crowd regions are left out. The
sample's single `label` (what classification and Prompt 1 need) is the category of the largest
box; `box_labels` keeps every box's category for the dense prompt (Eq. 12); `masks` keeps each
box's instance mask (polygons or RLE, turned into compressed RLE by pycocotools) when every
annotation of the image has a segmentation.
"""

from __future__ import annotations

import contextlib
import io

from pycocotools.coco import COCO

from pipeline.datasets.adapters.base import AdapterResult, DatasetAdapter, RawSample, make_key
from pipeline.shards.masks import from_coco_segmentation
from pipeline.shards.records import SkippedSample


class CocoAdapter(DatasetAdapter):
    def splits(self) -> list[str]:
        """train and val, plus any other split with its annotations file (sample-spot's
        test_shift and train_indep)."""
        year = str(self.options.get("year", "2017"))
        found = sorted(
            p.name.removeprefix("instances_").removesuffix(f"{year}.json")
            for p in (self.root / "annotations").glob(f"instances_*{year}.json")
        )
        return list(dict.fromkeys(["train", "val", *found]))

    def load(self) -> AdapterResult:
        self.check_split()
        year = str(self.options.get("year", "2017"))
        annotation_file = self.root / "annotations" / f"instances_{self.split}{year}.json"
        image_dir = self.root / f"{self.split}{year}"
        if not annotation_file.exists():
            raise FileNotFoundError(f"{annotation_file} is missing: not a COCO layout")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
            coco = COCO(str(annotation_file))
        category_ids = sorted(coco.getCatIds())
        label_of = {cid: i for i, cid in enumerate(category_ids)}
        classes = [coco.loadCats(cid)[0]["name"] for cid in category_ids]
        result = AdapterResult(
            classes, [str(c) for c in category_ids], [], annotation_files=[annotation_file]
        )
        for image_id in sorted(coco.getImgIds()):
            info = coco.loadImgs(image_id)[0]
            path = image_dir / info["file_name"]
            annotations = [
                a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd")
            ]
            if not annotations:
                result.skipped.append(SkippedSample(source=str(path), reason="no object boxes"))
                continue
            has_masks = all(a.get("segmentation") for a in annotations)
            largest = max(annotations, key=lambda a: a["bbox"][2] * a["bbox"][3])
            result.samples.append(
                RawSample(
                    key=make_key(path.stem),
                    path=path,
                    label=label_of[largest["category_id"]],
                    boxes=[(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in annotations)],
                    box_labels=[label_of[a["category_id"]] for a in annotations],
                    masks=[
                        from_coco_segmentation(a["segmentation"], info["height"], info["width"])
                        for a in annotations
                    ]
                    if has_masks
                    else [],
                )
            )
        return result
