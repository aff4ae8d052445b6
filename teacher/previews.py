"""Preview overlays of cached maps: the teacher's view (with its boxes) beside C_VLM on top of it.

Reads only the committed rows of a cache entry and the shard images, so a person can check what
the teacher attended to without this project's model code.
"""

from __future__ import annotations

import io
from pathlib import Path

import fsspec
import numpy as np
from matplotlib import colormaps
from PIL import Image

from pipeline.cache import CacheEntry
from pipeline.shard_reader import iter_shard
from teacher.view import teacher_view

OVERLAY_ALPHA = 0.55


def overlay(view: Image.Image, c_vlm: np.ndarray) -> Image.Image:
    """C_VLM (G x G) scaled to the view: each cell covers its patch exactly (nearest)."""
    peak = float(c_vlm.max())
    heat = c_vlm / peak if peak > 0 else c_vlm
    colored = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)  # [G, G, 3]
    heat_image = Image.fromarray(colored).resize(view.size, Image.Resampling.NEAREST)
    return Image.blend(view.convert("RGB"), heat_image, OVERLAY_ALPHA)


def preview_image(
    image: Image.Image, boxes: list, c_vlm: np.ndarray, entry: CacheEntry
) -> Image.Image:
    geometry = entry.manifest.get("geometry") or {}
    visual = entry.manifest["spec"]["teacher"].get("visual_prompt", {})
    view, _ = teacher_view(
        image,
        boxes,
        int(geometry.get("size", 336)),
        geometry.get("mode", "pad"),
        tuple(visual.get("pad_color", (122, 116, 104))),
        tuple(visual.get("box_color", (255, 0, 0))),
        int(visual.get("box_width", 3)),
    )
    side_by_side = Image.new("RGB", (view.width * 2, view.height))
    side_by_side.paste(view, (0, 0))
    side_by_side.paste(overlay(view, c_vlm), (view.width, 0))
    return side_by_side


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
            png = preview_image(
                image, sample.record.boxes, np.asarray(maps.c_vlm[i], np.float32), entry
            )
            url = f"{entry.path}/previews/{sample.key}.png"
            buffer = io.BytesIO()
            png.save(buffer, format="PNG")
            # url_to_fs + pipe_file: the same two calls for a local entry and an s3:// one.
            fs, path = fsspec.core.url_to_fs(url, **(entry.storage_options or {}))
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe_file(path, buffer.getvalue())
            saved.append(url)
    return saved
