"""Teacher stage: quantized LLaVA-1.5 interaction maps (C_VLM), paper Sec. 4.2 / DESIGN 4.

teacher = load_teacher(TeacherConfig(model="tiny"), vocabulary=index.classes)
results = teacher.extract([TeacherInput(key, image, boxes, class_name, label), ...])
"""

from __future__ import annotations

from teacher.config import DEFAULT_MODEL, TeacherConfig
from teacher.extract import MapResult, Teacher, TeacherInput
from teacher.loading import TeacherWeightsError, load_model_and_processor, weights_fingerprint
from teacher.view import ViewGeometry


def load_teacher(cfg: TeacherConfig, vocabulary: list[str]) -> Teacher:
    """Load the checkpoint named by cfg.model; vocabulary = class names offered by Prompt 1."""
    model, processor, source = load_model_and_processor(cfg)
    return Teacher(cfg, model, processor, vocabulary, weights_fingerprint(source, model))


__all__ = [
    "DEFAULT_MODEL",
    "MapResult",
    "Teacher",
    "TeacherConfig",
    "TeacherInput",
    "TeacherWeightsError",
    "ViewGeometry",
    "load_teacher",
]
