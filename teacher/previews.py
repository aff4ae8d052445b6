"""Preview overlays of cached maps: the teacher's view (with its boxes), then C_fore, C_back and
C_VLM each laid over it.

Reads only the committed rows of a cache entry and the shard images, so a person can check what
the teacher attended to without this project's model code.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from pipeline.cache import CacheEntry
from pipeline.geometry import MapGeometry
from pipeline.shards.reader import iter_shard
from teacher.config import TeacherConfig
from teacher.prompting.view import teacher_view

OVERLAY_ALPHA = 0.55
_DEFAULT_VISUAL = TeacherConfig().model_dump(include={"pad_color", "box_color", "box_width"})


def overlay(view: Image.Image, grid_map: np.ndarray) -> Image.Image:
    """A G x G map scaled to the view: each cell covers its patch exactly (nearest); the
    colors span the map's own range, so raw C_fore / C_back are as readable as C_VLM."""
    low, high = float(grid_map.min()), float(grid_map.max())
    heat = (grid_map - low) / (high - low) if high > low else np.zeros_like(grid_map)
    colored = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)  # [G, G, 3]
    heat_image = Image.fromarray(colored).resize(view.size, Image.Resampling.NEAREST)
    return Image.blend(view.convert("RGB"), heat_image, OVERLAY_ALPHA)


def _titled(panel: Image.Image, title: str) -> Image.Image:
    draw = ImageDraw.Draw(panel)
    draw.rectangle((0, 0, 8 + 7 * len(title), 16), fill=(0, 0, 0))
    draw.text((4, 3), title, fill=(255, 255, 255))
    return panel


def preview_image(
    image: Image.Image, boxes: list, maps: dict[str, np.ndarray], entry: CacheEntry
) -> Image.Image:
    """One row: the teacher's view with its boxes, then each map of `maps` (title -> G x G)."""
    geometry = MapGeometry.model_validate(entry.manifest["geometry"])
    # The visual prompt the teacher recorded in its spec; a spec without one (maps from
    # elsewhere) gets TeacherConfig's defaults, the one place they are declared.
    visual = {**_DEFAULT_VISUAL, **entry.manifest["spec"]["teacher"].get("visual_prompt", {})}
    view, _ = teacher_view(
        image,
        boxes,
        geometry.size,
        geometry.mode,
        tuple(visual["pad_color"]),
        tuple(visual["box_color"]),
        int(visual["box_width"]),
    )
    panels = [_titled(view.copy(), "teacher view + boxes")]
    panels += [_titled(overlay(view, grid_map), title) for title, grid_map in maps.items()]
    row = Image.new("RGB", (view.width * len(panels), view.height))
    for i, panel in enumerate(panels):
        row.paste(panel, (i * view.width, 0))
    return row


def save_previews(entry: CacheEntry, shard_dir: str | Path, count: int = 6) -> list[str]:
    """Write up to `count` PNGs (valid rows of committed shards) under `<entry>/previews/`."""
    saved: list[str] = []
    for name in sorted(entry.committed_shards()):
        if len(saved) >= count:
            break
        maps = entry.read_shard(name)
        rows = {key: i for i, key in enumerate(maps.keys)}
        for sample in iter_shard(Path(shard_dir) / name):
            if len(saved) >= count:
                break
            i = rows.get(sample.key)
            if i is None or not maps.valid[i]:
                continue
            image = Image.open(io.BytesIO(sample.image_bytes)).convert("RGB")
            grids = {
                "C_fore": np.asarray(maps.c_fore[i], np.float32),
                "C_back": np.asarray(maps.c_back[i], np.float32),
                "C_VLM": np.asarray(maps.c_vlm[i], np.float32),
            }
            png = preview_image(image, sample.record.boxes, grids, entry)
            buffer = io.BytesIO()
            png.save(buffer, format="PNG")
            saved.append(entry.put_file(f"previews/{sample.key}.png", buffer.getvalue()))
    return saved
