"""Dense batches: the classifier's shard + map pipeline (student/loader.py), with each image's
boxes, categories and instance masks as Conditional DETR targets.

The view is the whole image resized to S x S (a stretch, as DETR-style detectors on fixed-size
inputs do), flipped at random in training; the boxes, masks and the C_VLM map follow the same
view, so boxes stay whole and normalized boxes map back to original pixels exactly. Batches add
`targets` (one dict per image: class_labels long[n], boxes float[n, 4] as normalized
(cx, cy, w, h), and for segmentation masks float[n, S, S]) and `orig_size` (height, width).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.geometry import Rect
from pipeline.shards.masks import decode
from pipeline.shards.records import SampleRecord
from student.loader import Collate, DecodeAndView, LoaderConfig, ShardMapLoader
from student.maps import PairedTransform


class WholeImageTransform(PairedTransform):
    """The whole image, resized to S x S; a random horizontal flip in training."""

    def sample_view(self, image) -> tuple[Rect, bool]:
        flip = self.train and bool(torch.rand(()) < self.hflip_p)
        return Rect(0.0, 0.0, float(image.width), float(image.height)), flip


def dense_targets(record: SampleRecord, flip: bool, size: int, masks: bool, key: str) -> dict:
    """DETR targets of one record under the whole-image view (maybe flipped)."""
    w, h = record.width, record.height
    boxes = torch.tensor(record.boxes, dtype=torch.float64).reshape(-1, 4)  # [n, 4] pixels
    boxes = boxes / torch.tensor([w, h, w, h], dtype=torch.float64)  # [n, 4] in [0, 1]
    if flip:
        boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)
    labels = record.box_labels or [record.label] * len(record.boxes)
    target = {
        "class_labels": torch.tensor(labels, dtype=torch.long),  # [n]
        "boxes": cxcywh.float(),  # [n, 4]
    }
    if masks:
        if len(record.masks) != len(record.boxes):
            raise ValueError(
                f"sample {key!r} has {len(record.boxes)} boxes but {len(record.masks)} masks: "
                "segmentation needs an instance mask per box (use TASK=detect for boxes only)"
            )
        if record.masks:
            stack = torch.from_numpy(np.stack([decode(m) for m in record.masks])).float()
            stack = torch.nn.functional.interpolate(stack[None], size=(size, size))[0]  # nearest
            target["masks"] = stack.flip(-1) if flip else stack  # [n, S, S]
        else:
            target["masks"] = torch.zeros(0, size, size)
    return target


class DenseDecode(DecodeAndView):
    def __init__(
        self, transform: PairedTransform, geometry: dict | None, masks: bool, view_seed: int
    ) -> None:
        super().__init__(transform, geometry, view_seed)
        self.masks = masks

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = super().__call__(sample)
        record = SampleRecord.model_validate_json(sample["json"])
        out["targets"] = dense_targets(
            record, out["flip"], self.transform.img_size, self.masks, out["key"]
        )
        out["orig_size"] = (record.height, record.width)
        return out


class DenseCollate(Collate):
    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(samples)
        batch["targets"] = [s["targets"] for s in samples]
        batch["orig_size"] = [s["orig_size"] for s in samples]
        return batch


class DenseShardLoader(ShardMapLoader):
    def __init__(self, config: LoaderConfig, masks: bool) -> None:
        self.masks = masks
        super().__init__(config)

    def decode_stage(self, geometry: dict[str, Any] | None, view_seed: int) -> DenseDecode:
        cfg = self.config
        transform = WholeImageTransform(
            cfg.img_size, cfg.patch_size, cfg.mean, cfg.std, cfg.train, hflip_p=cfg.hflip_p
        )
        return DenseDecode(transform, geometry, self.masks, view_seed)

    def collate_stage(self) -> DenseCollate:
        return DenseCollate(self.config.grid, self.config.map_control)


def build_dense_loader(config: LoaderConfig, masks: bool) -> DenseShardLoader:
    """The dense loader for one split; `masks` for segmentation."""
    return DenseShardLoader(config, masks)
