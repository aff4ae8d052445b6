"""Dense students: COCOeval against itself, the alignment switch, targets under flips, which
cache entries a dense run accepts, and a detection step under torchrun (2 gloo processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.dense_entries import check_entry_for_task
from pipeline.cache import CacheEntry, CacheSpec
from pipeline.datasets.adapters import CocoAdapter
from pipeline.datasets.sample_coco import write_sample_coco
from pipeline.shards.masks import decode, encode
from pipeline.shards.records import SampleRecord, read_index
from pipeline.shards.writer import write_shards
from student.config import StudentConfig
from student.dense.build import build_dense
from student.dense.coco_eval import coco_metrics, ground_truth
from student.dense.config import DetrConfig
from student.dense.loader import dense_targets

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = dict(
    model="vit_tiny_patch16_224", weights="none", img_size=32,
    model_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}, num_classes=6,
)  # fmt: skip
TINY_DETR = dict(
    num_queries=6, d_model=32, encoder_layers=1, decoder_layers=1, attention_heads=8, ffn_dim=32
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """sample-coco shards: train in 2 shards of 4, val in 1 shard of 4."""
    root = write_sample_coco(tmp_path_factory.mktemp("raw") / "sample-coco", 8, 4, seed=1)
    out = tmp_path_factory.mktemp("shards") / "sample-coco"
    for split in ("train", "val"):
        result = CocoAdapter(root, split).load()
        write_shards(result, out / split, "sample-coco", split, shard_size=4, progress=False)
    return out


def test_cocoeval_on_ground_truth_as_predictions_is_one(shards: Path) -> None:
    gt, ids = ground_truth(shards / "train")
    rows = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
         "segmentation": a["segmentation"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]  # fmt: skip
    assert len(ids) == 8 and len(rows) >= 16
    for iou_type in ("bbox", "segm"):
        metrics = coco_metrics(gt, rows, iou_type)
        assert metrics["mAP"] == metrics["AP50"] == metrics["AP75"] == 1.0, (iou_type, metrics)
    # one box moved off its object is one miss: no longer perfect
    rows[0] = {**rows[0], "bbox": [0.0, 0.0, 2.0, 2.0]}
    assert coco_metrics(gt, rows, "bbox")["mAP"] < 1.0
    assert coco_metrics(gt, [], "bbox")["mAP"] == 0.0


def _labels() -> list[dict]:
    return [
        {"class_labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.4]])},
    ]  # fmt: skip


def _peaked_maps() -> dict:
    c_vlm = torch.zeros(2, 4, 4)
    c_vlm[:, 1, 1] = 1.0
    return {"c_vlm": c_vlm, "map_valid": torch.tensor([True, True])}


def test_alignment_switch_changes_only_the_align_term() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    runs = {}
    for alignment in (True, False):
        model, criterion = build_dense(
            StudentConfig(**TINY_VIT, alignment=alignment), DetrConfig(**TINY_DETR)
        )
        model.eval()  # no dropout: both runs see the same computation
        outputs = model(images, labels=_labels(), with_interactions=criterion.alignment)
        runs[alignment] = (model, criterion(outputs, _peaked_maps()), outputs["detr"])
    (on, on_loss, on_out), (off, off_loss, off_out) = runs[True], runs[False]
    on_state, off_state = on.state_dict(), off.state_dict()
    assert on_state.keys() == off_state.keys()
    assert all(torch.equal(on_state[k], off_state[k]) for k in on_state)
    assert torch.allclose(on_out.logits, off_out.logits, atol=1e-6)
    assert torch.allclose(on_out.pred_boxes, off_out.pred_boxes, atol=1e-6)
    detr_terms = [k for k in on_loss if k.startswith("loss_")]
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(detr_terms)
    for name in detr_terms:
        assert torch.allclose(on_loss[name], off_loss[name], atol=1e-6), name
    assert off_loss["align"].item() == 0.0 and on_loss["align"].item() > 0.0
    assert torch.allclose(on_loss["loss"] - off_loss["loss"], on_loss["align"], atol=1e-5)
    # the alignment gradient reaches the interaction queries, the DETR terms alone do too
    on_loss["align"].backward()
    grads = [p.grad for n, p in on.named_parameters() if "interaction_q" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "switches",
    [
        {"gate": False},
        {"interaction_queries": False, "align_on_original": True},
        {"interaction_queries": False, "alignment": False},
    ],
)
def test_classifier_ablation_switches_work_for_segmentation(switches: dict) -> None:
    model, criterion = build_dense(
        StudentConfig(**{**TINY_VIT, **switches}), DetrConfig(**TINY_DETR, task="segment")
    )
    labels = _labels()
    for target in labels:
        target["masks"] = torch.zeros(len(target["boxes"]), 32, 32)
    outputs = model(torch.randn(2, 3, 32, 32), labels=labels, with_interactions=criterion.alignment)
    losses = criterion(outputs, _peaked_maps())
    assert {"loss_mask", "loss_dice", "align"} <= set(losses)
    assert outputs["detr"].pred_masks.shape[:2] == (2, TINY_DETR["num_queries"])
    losses["loss"].backward()
    assert (losses["align"].item() > 0) == criterion.alignment


def test_targets_follow_the_flip() -> None:
    mask = np.zeros((20, 40), np.uint8)
    mask[5:10, 0:10] = 1
    record = SampleRecord(label=2, class_name="x", boxes=[(0.0, 5.0, 10.0, 10.0)], box_labels=[2],
                          masks=[encode(mask)], width=40, height=20, source="s")  # fmt: skip
    plain = dense_targets(record, False, 8, True, "k")
    flipped = dense_targets(record, True, 8, True, "k")
    assert torch.allclose(plain["boxes"], torch.tensor([[0.125, 0.375, 0.25, 0.25]]))
    assert torch.allclose(flipped["boxes"], torch.tensor([[0.875, 0.375, 0.25, 0.25]]))
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    assert plain["masks"][0, 2:4, 0:2].eq(1).all() and plain["masks"].sum() == 4
    assert np.array_equal(decode(record.masks[0]), mask)


def _entry(root: Path, shards: Path, prompt: str, box_width: int) -> CacheEntry:
    index = read_index(shards / "train")
    teacher = {"prompt": {"name": prompt}, "visual_prompt": {"box_width": box_width}}
    spec = CacheSpec(dataset="sample-coco", split="train", dataset_fingerprint=index.fingerprint,
                     teacher=teacher)  # fmt: skip
    return CacheEntry.create_or_open(
        str(root), spec, index, grid=4, geometry={"mode": "pad", "size": 32}
    )


def test_a_dense_run_refuses_maps_of_another_prompt(shards: Path, tmp_path: Path) -> None:
    from flows.train import _matching_entry
    from student.train_params import TrainParams

    classification = _entry(tmp_path, shards, "prompt1", 3)
    with pytest.raises(ValueError, match=r"prompt 'prompt1'.*dense"):
        check_entry_for_task(classification, "detect")
    check_entry_for_task(classification, "classify")
    index = read_index(shards / "train")
    params = TrainParams(dataset="sample-coco", task="detect", cache_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no map-cache entry"):
        _matching_entry(params, index, required=True)  # the prompt1 entry does not count
    boxes = _entry(tmp_path, shards, "dense", 3)
    assert _matching_entry(params, index, required=True) == boxes.path
    # Table 9's language-only maps are their own entry: two dense entries need a choice
    language_only = _entry(tmp_path, shards, "dense", 0)
    assert language_only.path != boxes.path
    with pytest.raises(ValueError, match="several cache entries"):
        _matching_entry(params, index, required=True)
    # A run that does not align (maps only for its overlays) takes none rather than failing.
    assert _matching_entry(params, index, required=False) is None
    explicit = params.model_copy(update={"cache_entry": classification.path})
    with pytest.raises(ValueError, match="prompt 'prompt1'"):
        _matching_entry(explicit, index, required=True)


@pytest.mark.slow
def test_detection_step_under_torchrun_then_resume(shards: Path, tmp_path: Path) -> None:
    from student.config import TrainConfig
    from student.run import run_training
    from student.run_config import DataConfig, RunConfig

    config = RunConfig(
        student=StudentConfig(**TINY_VIT, alignment=False),
        train=TrainConfig(epochs=1, lr=1e-3, warmup_epochs=0, run_dir=tmp_path / "run", overlays=0),
        data=DataConfig(shard_dir=shards, val_split=None, batch_size=2, num_workers=0),
        device="cpu", task="detect", detr=DetrConfig(**TINY_DETR),
    )  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "student.run", "--config", str(path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    # 8 train samples, 2 ranks, batches of 2: 2 steps each, in lockstep
    assert len(rows) == 1 and rows[0]["step"] == 2
    assert np.isfinite(rows[0]["train_loss"]) and rows[0]["train_align"] == 0.0
    assert "param_overhead=" in (tmp_path / "run" / "model.txt").read_text()
    # resume in one process: epoch 2 continues from the DDP checkpoint
    resumed = run_training(
        config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    )
    assert [r["epoch"] for r in resumed] == [2] and resumed[0]["step"] == 2 + 4


def test_dense_loader_yields_detr_targets_with_masks(shards: Path) -> None:
    from student.dense.loader import build_dense_loader
    from student.loader import LoaderConfig

    loader = build_dense_loader(LoaderConfig(shard_dir=shards, cache_entry=None, split='val', img_size=32, patch_size=8, batch_size=4, train=False, num_workers=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), masks=True)  # fmt: skip
    (batch,) = list(loader)
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["targets"]) == 4
    gt, ids = ground_truth(shards / "val")
    for key, target, size in zip(batch["key"], batch["targets"], batch["orig_size"], strict=True):
        anns = gt.imgToAnns[ids[key]]
        assert tuple(size) == (96, 96) and len(target["boxes"]) == len(anns) == len(target["masks"])
        assert target["class_labels"].tolist() == [a["category_id"] - 1 for a in anns]
        for ann, box, mask in zip(anns, target["boxes"], target["masks"], strict=True):
            x, y, w, h = ann["bbox"]
            expected = torch.tensor([x + w / 2, y + h / 2, w, h]) / 96
            assert torch.allclose(box, expected, atol=1e-6)
            small = torch.nn.functional.interpolate(
                torch.from_numpy(gt.annToMask(ann)).float()[None, None], size=(32, 32)
            )[0, 0]
            assert torch.equal(mask, small)
