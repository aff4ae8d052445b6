"""Instance masks in shards: COCO compressed RLE, as pycocotools writes it (docs/design.md).

A mask is `{"size": [height, width], "counts": "<COCO compressed RLE string>"}`, one per box, in
box order. That is COCO's own RLE (column-major run lengths, LEB128-like ASCII), so any COCO tool
decodes it: `pycocotools.mask.decode(mask)` gives the uint8 [height, width] array. Polygons are
turned into RLE when the shards are written (pycocotools' own rasterization), so a reader never
needs to know which form the raw annotation had.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.shards.checks import check_boxes
from pipeline.shards.records import Box, MaskRLE


def encode(mask: np.ndarray) -> MaskRLE:
    """A binary [H, W] array -> COCO compressed RLE with a str `counts` (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: MaskRLE) -> np.ndarray:
    """COCO RLE (str or bytes counts) -> uint8 [H, W]."""
    counts = rle["counts"]
    return mask_utils.decode(
        {
            "size": list(rle["size"]),
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    )


def from_coco_segmentation(segmentation: object, height: int, width: int) -> MaskRLE:
    """Any COCO `segmentation` (polygons, uncompressed or compressed RLE) -> compressed RLE."""
    if isinstance(segmentation, list):  # polygons: pycocotools rasterizes and merges them
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    elif isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    else:
        raise ValueError(f"unknown COCO segmentation {type(segmentation).__name__}")
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def check_masks(
    masks: Sequence[MaskRLE], boxes: Sequence[Box], width: int, height: int
) -> tuple[list[MaskRLE], list[str]]:
    """Masks must be one per box and of the image's size; otherwise all are dropped, with the
    reason as a repair note (boxes stay: detection still has its targets)."""
    if not masks:
        return [], []
    if len(masks) != len(boxes):
        return [], [f"dropped {len(masks)} masks: they do not pair with the {len(boxes)} boxes"]
    for rle in masks:
        if list(rle["size"]) != [height, width]:
            return [], [
                f"dropped masks: a mask of size {list(rle['size'])} on a {width}x{height} image"
            ]
    return list(masks), []


def check_dense_targets(
    boxes: Sequence[Box],
    labels: Sequence[int],
    masks: Sequence[MaskRLE],
    width: int,
    height: int,
) -> tuple[list[Box], list[int], list[MaskRLE], list[str]]:
    """check_boxes, with each box's mask kept or dropped together with its box."""
    masks, repairs = check_masks(masks, boxes, width, height)
    if not masks:
        kept, kept_labels, box_repairs = check_boxes(list(boxes), list(labels), width, height)
        return kept, kept_labels, [], repairs + box_repairs
    kept, kept_labels, kept_masks = [], [], []
    padded = list(labels) or [-1] * len(boxes)
    for box, label, rle in zip(boxes, padded, masks, strict=True):
        one, _, notes = check_boxes([box], [label], width, height)
        repairs += notes
        if one:
            kept.append(one[0])
            kept_labels.append(label)
            kept_masks.append(rle)
    return kept, (kept_labels if labels else []), kept_masks, repairs
