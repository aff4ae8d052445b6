"""Teacher stage: quantized LLaVA-1.5 interaction maps (C_VLM), paper Sec. 4.2 / docs/maps.md.

teacher = load_teacher(TeacherConfig(model="tiny"), vocabulary=index.classes)
results = teacher.extract([TeacherInput(key, image, boxes, class_name, label), ...])
describe_teacher(cfg, vocabulary).spec()  # the same spec, without weights, torch or transformers

Importing this package stays light (no torch, no transformers): the running model
(teacher.model.Teacher) and the loading code are imported by load_teacher when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.geometry import MapGeometry, ViewGeometry
from teacher.baselines import BASELINES, BaselineTeacher
from teacher.config import DEFAULT_MODEL, TeacherConfig
from teacher.results import MapResult, TeacherInput
from teacher.spec import TeacherSpec
from teacher.weights.checkpoint import read_checkpoint
from teacher.weights.devices import TeacherDeviceError, resolve_config
from teacher.weights.hub_weights import TeacherWeightsError

if TYPE_CHECKING:
    from teacher.model import Teacher


def describe_teacher(cfg: TeacherConfig, vocabulary: list[str]) -> TeacherSpec | BaselineTeacher:
    """The teacher without its weights (spec, grid, geometry): finding a cache entry, or
    learning that every shard is committed, costs a read of the checkpoint's JSON files, not a
    7B load (nor, for most checkpoints, an import of torch or transformers).
    `model="box"` or `"uniform"` is a baseline teacher (teacher/baselines.py): no weights."""
    if cfg.model in BASELINES:
        return BaselineTeacher(cfg, vocabulary)
    cfg = resolve_config(cfg)  # the dtype `auto` decides: the spec records the real one
    checkpoint = read_checkpoint(cfg)
    return TeacherSpec(cfg, vocabulary, checkpoint.facts, checkpoint.tokenizer, checkpoint.identity)


def load_teacher(cfg: TeacherConfig, vocabulary: list[str]) -> Teacher | BaselineTeacher:
    """Load the checkpoint named by cfg.model; vocabulary = class names offered by Prompt 1."""
    if cfg.model in BASELINES:
        return BaselineTeacher(cfg, vocabulary)
    from teacher.model import Teacher
    from teacher.weights.loading import load_config_and_processor, load_model

    description = describe_teacher(cfg, vocabulary)
    _, processor, source = load_config_and_processor(description.cfg)
    model = load_model(description.cfg, source)
    return Teacher(description, model, processor)


__all__ = [
    "BASELINES",
    "DEFAULT_MODEL",
    "BaselineTeacher",
    "MapGeometry",
    "MapResult",
    "TeacherConfig",
    "TeacherDeviceError",
    "TeacherInput",
    "TeacherSpec",
    "TeacherWeightsError",
    "ViewGeometry",
    "describe_teacher",
    "load_teacher",
]
