"""The rows a map-quality report is computed from: shared by the report (pipeline.cache.report)
and its figure (pipeline.cache.report_figure), which import this and not each other."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ReportRows:
    """Every committed row of an entry, joined with its shard record (arrays row-aligned)."""

    keys: list[str]
    shards: list[str]
    domains: list[str | None]
    boxes: list[list[list[float]]]
    sizes: np.ndarray  # int [N, 2] width, height
    valid: np.ndarray  # bool [N]
    reasons: list[str]
    fg_correct: np.ndarray  # int8 [N]
    maps: dict[str, np.ndarray]  # name -> float16 [N, G, G], as stored
    coverage: np.ndarray  # float32 [N, G, G]: each cell's share inside the boxes
    uniform: np.ndarray  # float32 [N, G, G]: each cell's share inside the image

    @property
    def has_boxes(self) -> np.ndarray:
        return self.coverage.reshape(len(self.keys), -1).sum(1) > 0  # [N]
