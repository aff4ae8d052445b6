"""Flow parameters built from one config model per concern, still settable by flat names.

A flow's parameters nest the stage's own config models (`student: StudentConfig`, `teacher:
TeacherConfig`, ...): each default is declared once, in its model, and Prefect renders every
section as its own part of the run form. Users and scripts keep the short flat names they know
(`--epochs 3`, `{"align_lambda": 2}` in an experiment spec, `--teacher tiny`): `SectionedParams`
routes each flat key into the section that declares it before validation, so a flat key and its
nested spelling are the same parameter.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, model_validator
from pydantic.fields import FieldInfo


class FlatField:
    """Where a flat name lands: `section` is None for a field of the params model itself."""

    def __init__(self, section: str | None, name: str, info: FieldInfo) -> None:
        self.section, self.name, self.info = section, name, info

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


class SectionedParams(BaseModel):
    """Params whose `flat_sections` are nested config models reachable by flat names.

    `flat_renames` maps a flat name to a section field whose own name would be unclear or
    clash at the top level (e.g. `teacher` -> `teacher.model`). A section field whose name
    appears in several sections (`seed`) is set in all of them by its flat name."""

    flat_sections: ClassVar[tuple[str, ...]] = ()
    flat_renames: ClassVar[dict[str, tuple[str, str]]] = {}
    # Section fields that a flow resolves itself (from the shards, the run name...), not users.
    flat_hidden: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def flat_fields(cls) -> dict[str, list[FlatField]]:
        """Every flat name -> the fields it sets (one, or several for shared names)."""
        fields: dict[str, list[FlatField]] = {}
        renamed = {target: flat for flat, target in cls.flat_renames.items()}
        for name, info in cls.model_fields.items():
            if name not in cls.flat_sections:
                fields.setdefault(name, []).append(FlatField(None, name, info))
                continue
            section_model = _section_model(cls, name)
            for sub, sub_info in section_model.model_fields.items():
                if f"{name}.{sub}" in cls.flat_hidden:
                    continue
                flat = renamed.get((name, sub), sub)
                fields.setdefault(flat, []).append(FlatField(name, sub, sub_info))
        for flat, targets in fields.items():
            if len(targets) > 1 and any(t.section is None for t in targets):
                where = ", ".join(t.dotted for t in targets)
                raise TypeError(f"{cls.__name__}: flat name {flat!r} is ambiguous ({where})")
        return fields

    @model_validator(mode="before")
    @classmethod
    def _route_flat_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.flat_fields()
        routed: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            targets = fields.get(key)
            whole_section = key in cls.flat_sections and isinstance(value, (dict, BaseModel))
            if whole_section or not targets or targets[0].section is None:
                routed[key] = value  # a top-level field, a whole section, or unknown (rejected)
                continue
            for target in targets:
                sections.setdefault(target.section, {})[target.name] = value
        for section, values in sections.items():
            given = routed.get(section, {})
            if isinstance(given, BaseModel):
                given = given.model_dump()
            routed[section] = {**given, **values}  # a flat key wins over the section's copy
        return routed


def _section_model(params: type[BaseModel], name: str) -> type[BaseModel]:
    annotation = params.model_fields[name].annotation
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise TypeError(f"{params.__name__}.{name} is a flat section but not a config model")
    return annotation
