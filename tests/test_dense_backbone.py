"""The dense stand-in backbone: per-cell targets against hand-computed shares, and the saved
file loads as a detector's frozen ViT with the trained weights."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from safetensors.torch import load_file

from experiments.backbones import dense_backbone as db
from pipeline.datasets.sample_coco import IMAGE_SIZE


def rle_annotation(mask: np.ndarray, category_id: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "category_id": category_id,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
    }


def test_cell_targets_are_the_covered_shares():
    cell = IMAGE_SIZE // db.GRID  # 12 px at 96 px and an 8 x 8 grid
    square = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    square[0 : 2 * cell, 0:cell] = 1  # cells (0, 0) and (1, 0) whole
    half = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    half[0 : cell // 2, cell : 2 * cell] = 1  # the top half of cell (0, 1)
    shares = db.cell_targets([rle_annotation(square, 2), rle_annotation(half, 5)])
    expected = np.zeros((db.GRID * db.GRID, 7))
    expected[:, 0] = 1.0
    expected[0] = expected[db.GRID] = [0, 0, 1, 0, 0, 0, 0]
    expected[1] = [0.5, 0, 0, 0, 0, 0.5, 0]
    np.testing.assert_allclose(shares, expected, atol=1e-6)


def test_saved_backbone_loads_as_the_detectors_frozen_vit(tmp_path):
    from student.config import StudentConfig
    from student.dense.build import build_dense
    from student.dense.config import DetrConfig

    out = tmp_path / "dense-vit.safetensors"
    card = db.pretrain(out, images=8, epochs=1, batch=8, heldout=4)
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert card["images"] == 8 and 0.0 <= card["heldout_cell_top1"] <= 1.0
    cfg = StudentConfig(
        model=db.MODEL, weights=str(out), img_size=db.IMG_SIZE, model_kwargs=db.MODEL_KWARGS,
        num_classes=6,
    )  # fmt: skip
    detr = DetrConfig(num_queries=4, d_model=32, encoder_layers=1, decoder_layers=1,
                      attention_heads=2, ffn_dim=32)  # fmt: skip
    model, _ = build_dense(cfg, detr)
    saved = load_file(str(out))  # plain safetensors read, independent of timm's loader
    vit = model.encoder.vit.state_dict()
    for name in ("patch_embed.proj.weight", "blocks.3.mlp.fc2.weight", "norm.weight"):
        torch.testing.assert_close(vit[name], saved[name])
    assert not any(p.requires_grad for p in model.encoder.vit.patch_embed.parameters())
