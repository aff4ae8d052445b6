"""Teacher stage: quantized LLaVA-1.5 interaction maps (C_VLM), paper Sec. 4.2 / DESIGN 4.

teacher = load_teacher(TeacherConfig(model="tiny"), vocabulary=index.classes)
results = teacher.extract([TeacherInput(key, image, boxes, class_name, label), ...])
"""

from __future__ import annotations

from pipeline.geometry import MapGeometry, ViewGeometry
from teacher.baselines import BASELINES, BaselineTeacher
from teacher.config import DEFAULT_MODEL, TeacherConfig
from teacher.extract import MapResult, Teacher, TeacherInput
from teacher.loading import (
    TeacherDeviceError,
    TeacherWeightsError,
    load_config_and_processor,
    load_model,
    resolve_config,
    weights_fingerprint,
)


def load_teacher(cfg: TeacherConfig, vocabulary: list[str]) -> Teacher | BaselineTeacher:
    """Load the checkpoint named by cfg.model; vocabulary = class names offered by Prompt 1.
    `model="box"` or `"uniform"` is a baseline teacher (teacher/baselines.py): no weights."""
    if cfg.model in BASELINES:
        return BaselineTeacher(cfg, vocabulary)
    config, processor, source = load_config_and_processor(cfg)
    cfg = resolve_config(cfg, source)
    model = load_model(cfg, source)
    return Teacher(cfg, model, processor, vocabulary, weights_fingerprint(source, config), config)


def describe_teacher(cfg: TeacherConfig, vocabulary: list[str]) -> Teacher | BaselineTeacher:
    """The teacher without its weights (spec, grid, geometry): finding a cache entry, or
    learning that every shard is committed, costs a config read, not a 7B load."""
    if cfg.model in BASELINES:
        return BaselineTeacher(cfg, vocabulary)
    config, processor, source = load_config_and_processor(cfg)
    cfg = resolve_config(cfg, source)
    return Teacher(cfg, None, processor, vocabulary, weights_fingerprint(source, config), config)


__all__ = [
    "BASELINES",
    "DEFAULT_MODEL",
    "BaselineTeacher",
    "MapGeometry",
    "MapResult",
    "Teacher",
    "TeacherConfig",
    "TeacherDeviceError",
    "TeacherInput",
    "TeacherWeightsError",
    "ViewGeometry",
    "describe_teacher",
    "load_teacher",
]
