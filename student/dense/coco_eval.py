"""COCO metrics of a dense run with pycocotools' COCOeval (bbox; segm for segmentation).

Ground truth is rebuilt from the shards (boxes in original pixels, masks as stored RLE), so any
dataset with shards is evaluated the COCO way; predictions come from the library's own
post-processing (ConditionalDetrImageProcessor.post_process_object_detection).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from transformers import ConditionalDetrImageProcessor

from pipeline.shards.reader import iter_shard
from pipeline.shards.records import read_index

METRICS = ("mAP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")  # COCOeval.stats[0:6]


def ground_truth(split_dir: Path) -> tuple[COCO, dict[str, int]]:
    """A COCO object of the split's shards, and key -> image id."""
    index = read_index(split_dir)
    images, annotations, ids = [], [], {}
    for shard in index.shards:
        for sample in iter_shard(split_dir / shard.name):
            record = sample.record
            image_id = ids[sample.key] = len(ids) + 1
            images.append(
                {"id": image_id, "file_name": sample.key, "width": record.width,
                 "height": record.height}
            )  # fmt: skip
            labels = record.box_labels or [record.label] * len(record.boxes)
            masks = record.masks if len(record.masks) == len(record.boxes) else []
            for n, (box, label) in enumerate(zip(record.boxes, labels, strict=True)):
                x0, y0, x1, y1 = box
                ann = {
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
                    "area": float((x1 - x0) * (y1 - y0)),
                }  # fmt: skip
                if masks:
                    ann["segmentation"] = dict(masks[n])
                    ann["area"] = float(
                        mask_utils.area({**masks[n], "counts": masks[n]["counts"].encode()})
                    )
                annotations.append(ann)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(index.classes)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, ids


def predictions(
    outputs, keys: list[str], orig_sizes: list[tuple[int, int]], ids: dict[str, int], top_k: int
) -> list[dict]:
    """COCO result rows (bbox, and segmentation when the outputs have pred_masks)."""
    processor = ConditionalDetrImageProcessor()
    logits = outputs.logits.float()  # [B, Q, K]
    results = processor.post_process_object_detection(
        outputs, threshold=0.0, target_sizes=orig_sizes, top_k=top_k
    )
    pred_masks = getattr(outputs, "pred_masks", None)  # [B, Q, h, w] or None
    if pred_masks is not None:
        # the same top-k as the post-processing, to know which query each detection came from
        flat = logits.sigmoid().flatten(1)  # [B, Q*K]
        queries = flat.topk(min(top_k, flat.shape[1]), dim=1).indices // logits.shape[2]
    rows = []
    for b, (result, key, size) in enumerate(zip(results, keys, orig_sizes, strict=True)):
        boxes = result["boxes"].tolist()
        masks = None
        if pred_masks is not None:
            chosen = pred_masks[b, queries[b]].float()[None]  # [1, k, h, w]
            up = torch.nn.functional.interpolate(chosen, size=size, mode="bilinear")[0]
            masks = (up.sigmoid() > 0.5).cpu().numpy().astype(np.uint8)  # [k, H, W]
        for n, (score, label) in enumerate(
            zip(result["scores"].tolist(), result["labels"].tolist(), strict=True)
        ):
            x0, y0, x1, y1 = boxes[n]
            row = {"image_id": ids[key], "category_id": int(label) + 1, "score": float(score),
                   "bbox": [x0, y0, x1 - x0, y1 - y0]}  # fmt: skip
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[n]))
                row["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            rows.append(row)
    return rows


def coco_metrics(gt: COCO, rows: list[dict], iou_type: str) -> dict[str, float]:
    """COCOeval's summary numbers (mAP@[.5:.95], AP50, AP75, AP small/medium/large); -1 marks a
    size class without ground truth, as pycocotools reports it. No prediction at all: zeros."""
    if not rows:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt.loadRes([dict(r) for r in rows])
        evaluator = COCOeval(gt, detections, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRICS, evaluator.stats[:6], strict=True)}
