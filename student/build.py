"""The one place configuration meets modules (DETR's `build`)."""

from __future__ import annotations

import math

import timm.optim
import torch
from timm.scheduler import CosineLRScheduler

from student.config import StudentConfig, TrainConfig
from student.loss import InteractionCriterion
from student.model import IViT, create_backbone


def build(cfg: StudentConfig) -> tuple[IViT, InteractionCriterion]:
    """The I-ViT (frozen backbone, trainable interaction parts and head) and its criterion."""
    model = IViT(create_backbone(cfg), cfg)
    # The new parts (W_q' copies, gates) are deterministic; the head was seeded in
    # create_backbone, so two builds of one config are identical (resume relies on it).
    criterion = InteractionCriterion(cfg)
    return model, criterion


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only; timm's grouping exempts biases and 1-d params
    from weight decay."""
    return timm.optim.create_optimizer_v2(
        model, opt="adamw", lr=train.lr, weight_decay=train.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int
) -> CosineLRScheduler:
    """Linear warm-up then cosine decay, stepped per optimizer update (`step_update`)."""
    if steps_per_epoch <= 0:
        raise ValueError("TrainConfig.steps_per_epoch: must be positive to plan the schedule")
    total = train.epochs * steps_per_epoch
    warmup = min(math.ceil(train.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - warmup, 1),
        lr_min=train.min_lr,
        warmup_t=warmup,
        warmup_lr_init=train.warmup_lr,
        warmup_prefix=True,  # the cosine starts where the warm-up ends
        t_in_epochs=False,
    )
