"""One item made ready for the teacher: boxes checked, the 336 px view drawn, the prompt written."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from pipeline.geometry import Box, ViewGeometry
from teacher.prompting.view import teacher_view
from teacher.results import TeacherInput
from teacher.spec import TeacherSpec


@dataclass
class Prepared:
    item: TeacherInput
    view: Image.Image
    geometry: ViewGeometry
    text: str
    head_chars: int  # length of the text before the answer
    objects: list[str] = field(default_factory=list)


def check_boxes(key: str, boxes: list[Box]) -> None:
    """ValueError naming the item when a box is not [x0, y0, x1, y1] with x1>x0, y1>y0."""
    for box in boxes:
        if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{key}: box {list(box)} is not [x0, y0, x1, y1], x1>x0, y1>y0")


def prepare(spec: TeacherSpec, item: TeacherInput) -> Prepared:
    cfg = spec.cfg
    check_boxes(item.key, item.boxes)
    view, geometry = teacher_view(
        item.image, item.boxes, spec.image_size, cfg.view,
        cfg.pad_color, cfg.box_color, cfg.box_width,
    )  # fmt: skip
    text, head_chars, objects = spec.prompt(item)
    return Prepared(item, view, geometry, text, head_chars, objects)
