"""Preview overlays inside the Prefect UI: a markdown artifact with the pictures embedded.

The PNGs live next to the maps (a local folder or s3://), where a browser showing the UI cannot
fetch them; so each one goes into the artifact itself as a small JPEG `data:` URI, with its full
size file named under it.
"""

from __future__ import annotations

import base64
import io

import fsspec
from PIL import Image

THUMBNAIL_WIDTH = 672  # half of a 4-panel 1344 px preview row: each panel stays readable
JPEG_QUALITY = 85


def thumbnail_data_uri(png: bytes, width: int = THUMBNAIL_WIDTH) -> str:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def previews_markdown(urls: list[str], storage_options: dict | None = None) -> list[str]:
    """Markdown lines: for each preview, its picture and then its file."""
    lines = []
    for url in urls:
        with fsspec.open(url, "rb", **(storage_options or {})) as handle:
            png = handle.read()
        name = url.rsplit("/", 1)[-1].removesuffix(".png")
        lines += [f"![{name}]({thumbnail_data_uri(png)})", "", f"- `{url}`", ""]
    return lines
