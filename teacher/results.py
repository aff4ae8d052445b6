"""What goes into a teacher and what comes out: one image with its boxes and class, one row of maps.

Plain data, shared by the LLaVA teacher (teacher.model), the baselines and the shard job; it
imports no model code, so describing a teacher or reading its results stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.geometry import Box

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class TeacherInput:
    key: str
    image: Image.Image  # RGB, original size
    boxes: list[Box]  # original pixels
    class_name: str
    label: int
    object_names: list[str] | None = None  # dense prompt: classes present (default [class_name])
    masks: list[dict] | None = (
        None  # COCO RLE per box (pipeline.shards.masks), when the data has them
    )


@dataclass
class MapResult:
    key: str
    c_vlm: np.ndarray  # float32 [G, G], sums to 1 when valid, zeros when not
    c_fore: np.ndarray  # float32 [G, G] (dense: sum of the object words' maps)
    c_back: np.ndarray  # float32 [G, G]
    valid: bool
    reason: str  # "" when valid
    answer: str
    fg_correct: int  # 1 / 0, or -1 when unknown (forced answers choose no foreground)
    audit: dict | None
