"""What every stand-in backbone shares: the benchmark student's shape, where the sample-shift
one is saved, and what a pretraining task is. Imported by the pretraining (backbone.py,
spot_backbone.py) and by the probe alike, which therefore need not import each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.paths import models_dir

# The benchmark student: 32 px, 4 px patches (an 8x8 grid), 3 blocks of width 64 (2 heads):
# small enough that 3 seeds of every variant train in minutes on 2 CPU cores.
MODEL = "vit_tiny_patch16_224"
IMG_SIZE = 32
MODEL_KWARGS = {"patch_size": 4, "depth": 3, "embed_dim": 64, "num_heads": 2}
DEFAULT_OUT = models_dir() / "shift-vit.safetensors"


@dataclass(frozen=True)
class PretrainTask:
    """What a stand-in backbone learns: two attributes drawn independently (the object's shape,
    and the benchmark's cue: a background colour, a marker colour), plus which shape covers each
    patch (the dense head, thrown away afterwards)."""

    name: str
    shapes: int  # classes of the first attribute (and of the dense head, plus "none")
    cues: int  # classes of the second attribute
    cue_name: str  # "background", "marker"
    render: Callable[[int, np.random.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    probe: Callable[..., dict]  # (model, img_size, train=, test=, seed=) -> {"shape": .., cue: ..}
    description: str
