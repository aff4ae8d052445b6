"""Where dense configuration meets modules (DETR's `build`)."""

from __future__ import annotations

import warnings

import torch

from student.build import build as build_classifier
from student.config import StudentConfig
from student.dense.config import DetrConfig
from student.dense.loss import DenseCriterion
from student.dense.model import DenseStudent
from student.model import create_backbone


def build_dense(cfg: StudentConfig, detr: DetrConfig) -> tuple[DenseStudent, DenseCriterion]:
    """Conditional DETR on the I-ViT (headless: num_classes=0) and its criterion. `cfg`'s
    num_classes is the detector's label count; the ablation switches act on the I-ViT as for
    the classifier."""
    # Seeded as a whole (the gate's first layer draws random weights), so two builds of one
    # config are identical without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        ivit, interaction = build_classifier(cfg.model_copy(update={"num_classes": 0}))
    return DenseStudent(ivit, detr, cfg.num_classes, seed=cfg.seed), DenseCriterion(interaction)


def build_plain_detector(cfg: StudentConfig, detr: DetrConfig) -> DenseStudent:
    """The same detector on the plain frozen ViT, without any I-ViT part (Table 6's baseline
    columns: parameters and FLOPs)."""
    with warnings.catch_warnings():  # only counted, never trained: its random weights are fine
        warnings.filterwarnings("ignore", message="WEIGHTS=none")
        vit = create_backbone(cfg.model_copy(update={"num_classes": 0, "weights": "none"}))
    for p in vit.parameters():
        p.requires_grad_(False)
    return DenseStudent(vit, detr, cfg.num_classes, seed=cfg.seed)
