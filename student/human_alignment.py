"""Human alignment of a run's interactions (paper Sec. 5.2.3, Fig. 6, App. 9).

Cosine similarity, per evaluated image, of C_VFM, C_VLM and C_AGT to a reference map C_HUM on
the student's patch grid over exactly the pixels the student saw (the evaluation crop):
- C_VFM / C_AGT: the CLS row over the patches (head mean), of the last block and the mean over
  blocks;
- C_VLM: the run's cached teacher map of that image (moved with the crop), where valid;
- C_HUM: from an annotation file (format below and in data/README.md). Without one, the
  ground-truth box mask stands in (each patch weighted by its share inside the boxes), and every
  output names it "box mask (C_HUM stand-in)".

Annotation file (JSON): {"format": "lfi-human-maps/1", "maps": {"<sample key>": [[...], ...]}}.
Each map is a rows x cols array (any size, the same or not for every image) over the whole
original image: patch (r, c) covers the r-th of `rows` equal bands from the top and the c-th of
`cols` from the left; values 1.0 for patches that directly decide the label, 0.5 for patches
that influence it indirectly, 0 otherwise (the paper's protocol). Images without an entry are
left out of the figure.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.geometry import Rect, box_coverage, image_rect, uniform_overlap
from pipeline.map_quality import cosine
from pipeline.shards.reader import iter_shard
from pipeline.shards.records import SampleRecord
from student.maps import center_crop_rect

HUMAN_FORMAT = "lfi-human-maps/1"
HUMAN_NAME = "C_HUM"
BOX_STAND_IN = "box mask (C_HUM stand-in)"
LEVELS = (0.0, 0.5, 1.0)
SERIES = ("C_VFM last block", "C_VFM mean of blocks", "C_VLM", "C_AGT last block",
          "C_AGT mean of blocks")  # fmt: skip


def load_human_maps(path: str | Path) -> dict[str, np.ndarray]:
    """key -> [rows, cols] float map; errors name the file and the key."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the human annotation file ({err})") from err
    if not isinstance(body, dict) or body.get("format") != HUMAN_FORMAT:
        raise ValueError(f'{path}: expected an object with "format": "{HUMAN_FORMAT}"')
    maps = {}
    for key, values in body.get("maps", {}).items():
        grid = np.asarray(values, np.float64)
        if grid.ndim != 2 or not grid.size:
            raise ValueError(f"{path}: map of {key!r} is not a non-empty rows x cols array")
        if not np.isin(grid, LEVELS).all():
            raise ValueError(f"{path}: map of {key!r} has values outside {LEVELS}")
        maps[key] = grid
    if not maps:
        raise ValueError(f'{path}: no maps under "maps"')
    return maps


def split_records(split_dir: Path) -> dict[str, SampleRecord]:
    """Every sample's record (boxes, size) of a split, by key."""
    return {
        s.key: s.record for tar in sorted(split_dir.glob("shard-*.tar")) for s in iter_shard(tar)
    }


def human_on_crop(human: np.ndarray, image: Rect, crop: Rect, grid: int) -> np.ndarray:
    """An annotation over the whole image, area-resampled onto the grid over `crop`."""
    rows, cols = human.shape
    fy = uniform_overlap(image.y0, image.y1, rows, crop.y0, crop.y1, grid)  # [g, rows]
    fx = uniform_overlap(image.x0, image.x1, cols, crop.x0, crop.x1, grid)  # [g, cols]
    return fy @ human @ fx.T  # [g, g]


class HumanAlignment:
    """Accumulates per-image cosines to the reference over evaluation batches."""

    def __init__(
        self,
        records: dict[str, SampleRecord],
        grid: int,
        crop_fraction: float,
        human: dict[str, np.ndarray] | None = None,
        source: str | None = None,
    ) -> None:
        self.records, self.grid, self.crop_fraction = records, grid, crop_fraction
        self.human = human
        self.reference = HUMAN_NAME if human is not None else BOX_STAND_IN
        self.source = source
        self.values: dict[str, list[float]] = defaultdict(list)

    def reference_map(self, key: str) -> np.ndarray | None:
        record = self.records.get(key)
        if record is None:
            raise KeyError(f"sample {key!r} is not in the split's shards")
        image = image_rect(record.width, record.height)
        crop = center_crop_rect(record.width, record.height, self.crop_fraction)
        if self.human is not None:
            if key not in self.human:
                return None
            return human_on_crop(self.human[key], image, crop, self.grid)
        return box_coverage(record.boxes, crop, self.grid, clip=image)

    def update(self, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        keys = list(batch["key"])
        refs = [self.reference_map(k) for k in keys]
        has = np.array([r is not None and r.any() for r in refs])  # [B]
        if not has.any():
            return
        ref = np.stack([r for r, h in zip(refs, has, strict=True) if h])  # [b, g, g]

        def rows(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()[has]  # [b, P]

        series = {}
        vfm = outputs["vfm_cls"]  # [L, B, P]
        series["C_VFM last block"], series["C_VFM mean of blocks"] = (
            rows(vfm[-1]),
            rows(vfm.mean(0)),
        )
        if outputs.get("agt_cls") is not None:
            agt = outputs["agt_cls"]  # [L, B, P]
            series["C_AGT last block"] = rows(agt[-1])
            series["C_AGT mean of blocks"] = rows(agt.mean(0))
        if "c_vlm" in batch:
            vlm = rows(batch["c_vlm"].reshape(len(keys), -1))  # [b, g*g]
            valid = batch["map_valid"].cpu().numpy()[has]
            vlm[~valid] = 0.0  # no teacher map: cosine is NaN and the image is left out
            series["C_VLM"] = vlm
        for name, values in series.items():
            self.values[name] += [float(v) for v in cosine(values, ref) if np.isfinite(v)]

    def result(self) -> dict[str, Any]:
        cosines = {}
        for name in SERIES:
            v = np.array(self.values.get(name, []))
            cosines[name] = (
                {"mean": float(v.mean()), "std": float(v.std()), "n": len(v)} if len(v) else None
            )
        return {"reference": self.reference, "source": self.source, "cosine": cosines}
