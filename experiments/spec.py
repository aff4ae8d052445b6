"""An experiment as data (docs/experiments.md): a grid of student variants, teachers, data fractions
and seeds, expanded into member runs.

A spec is a YAML (or JSON) file under experiments/specs/. Each member is one training run of the
train flow; its parameters are the spec's `base` overrides, then the variant's, then the teacher
entry, the fraction and the seed. A variant that does not align to maps (the ViT baseline, the
"IQ without IC" ablation) is not crossed with the teacher axis: its result does not depend on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.paths import PROJECT_ROOT
from student.train_params import TrainParams  # a member's parameters, checked before any run

SPEC_DIR = PROJECT_ROOT / "experiments" / "specs"
# Keys of a variant that are about the report, not the run.
VARIANT_REPORT_KEYS = ("baseline",)


class TeacherEntry(BaseModel):
    """Where a variant's maps come from: an extraction (run or found in the cache by the
    extract flow; its dataset, shards and cache root come from the experiment), or an existing
    cache entry of the train split (the val split's entry follows its teacher)."""

    model_config = ConfigDict(extra="forbid")

    extract: dict | None = Field(
        None, description="ExtractParams overrides: teacher, prompt, quant, dtype, view..."
    )
    cache_entry: str | None = Field(None, description="an existing entry of the train split")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherEntry:
        if (self.extract is None) == (self.cache_entry is None):
            raise ValueError("a teacher entry needs exactly one of `extract` or `cache_entry`")
        return self


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="folder under data/experiments/")
    title: str = Field(description="the table's caption")
    description: str = ""
    dataset: str = Field(description="a name from data/registry.json")
    base: dict = Field(default_factory=dict, description="TrainParams overrides for every member")
    variants: dict[str, dict] = Field(
        description="row label -> TrainParams overrides (ablation switches, model, lambda...); "
        "`baseline: <label>` names the row its convergence is measured against"
    )
    baseline: str = Field(description="the default baseline row (Fig. 3: epochs to reach its best)")
    teachers: dict[str, TeacherEntry] = Field(
        default_factory=dict,
        description="label -> maps; empty: the train flow's own matching entry",
    )
    fractions: list[float] = Field(default_factory=lambda: [1.0])
    fraction_params: dict[float, dict] = Field(
        default_factory=dict,
        description="data fraction -> TrainParams overrides for its members, applied after the "
        "variant's (e.g. a smaller batch where 1 % of the data is fewer images than a batch)",
    )
    seeds: list[int] = Field(default_factory=lambda: [0])
    eval_splits: list[str] = Field(
        default_factory=list, description="extra splits scored with each member's last checkpoint"
    )

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"name {name!r}: letters, digits, '.', '_' and '-' only")
        return name

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad or not fractions:
            raise ValueError(f"fractions must be in (0, 1] and not empty, got {fractions}")
        return fractions

    @model_validator(mode="after")
    def _known_baselines(self) -> ExperimentSpec:
        # Entries for fractions outside the grid stay unused: an override that narrows
        # `fractions` (one cell, more seeds) cannot delete them.
        bad = sorted(f for f in self.fraction_params if not 0 < f <= 1)
        if bad:
            raise ValueError(f"fraction_params: {bad} are not fractions in (0, 1]")
        sections = {
            "base": self.base,
            **self.variants,
            **{f"fraction_params[{f:g}]": p for f, p in self.fraction_params.items()},
        }
        for label, overrides in sections.items():
            run_keys = {k: v for k, v in overrides.items() if k not in VARIANT_REPORT_KEYS}
            known = set(TrainParams.flat_fields()) | set(TrainParams.flat_sections)
            unknown = set(run_keys) - known
            if unknown:
                raise ValueError(f"{label}: unknown train parameters {sorted(unknown)}")
            owned = {"run", "runs_root", "seed", "fraction", "dataset", "cache_entry"} & set(
                run_keys
            )
            if owned:
                raise ValueError(
                    f"{label}: {sorted(owned)} are set by the experiment, not a variant"
                )
        for label, overrides in self.variants.items():
            wanted = overrides.get("baseline", self.baseline)
            if wanted not in self.variants:
                raise ValueError(f"variant {label}: baseline {wanted!r} is not a variant")
        return self

    def variant_params(self, label: str) -> dict:
        overrides = {k: v for k, v in self.variants[label].items() if k not in VARIANT_REPORT_KEYS}
        return {**self.base, **overrides}

    def baseline_of(self, label: str) -> str:
        return self.variants[label].get("baseline", self.baseline)

    def aligns(self, label: str) -> bool:
        return TrainParams.model_validate(self.variant_params(label)).student.aligns


class Member(BaseModel):
    """One run of the grid."""

    variant: str
    teacher: str | None
    fraction: float
    seed: int
    params: dict = Field(description="TrainParams overrides, without run name and cache entry")
    teacher_spec: dict | None = Field(None, description="the teacher entry, as the spec says it")

    @property
    def row(self) -> str:
        """The table row this member reports into."""
        return self.variant if self.teacher is None else f"{self.variant} [{self.teacher}]"

    @property
    def name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.row).strip("-").lower()
        return f"{slug}-f{self.fraction:g}-s{self.seed}-{self.fingerprint()[:8]}"

    def fingerprint(self) -> str:
        """Changes whenever what the member trains changes: an edited spec makes new members."""
        payload = json.dumps(
            [self.params, self.teacher, self.teacher_spec, self.fraction, self.seed],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def members(spec: ExperimentSpec) -> list[Member]:
    """The grid, in table order: variants, then teachers, fractions and seeds."""
    grid = []
    for variant in spec.variants:
        teachers = list(spec.teachers) if spec.aligns(variant) and spec.teachers else [None]
        for teacher in teachers:
            for fraction in spec.fractions:
                for seed in spec.seeds:
                    params = {
                        **spec.variant_params(variant),
                        **spec.fraction_params.get(fraction, {}),
                        "fraction": fraction,
                        "seed": seed,
                    }
                    entry = spec.teachers[teacher].model_dump() if teacher else None
                    grid.append(
                        Member(
                            variant=variant,
                            teacher=teacher,
                            fraction=fraction,
                            seed=seed,
                            params=params,
                            teacher_spec=entry,
                        )
                    )
    return grid


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def spec_path(name_or_path: str | Path) -> Path:
    """A spec file: a path, or a name under experiments/specs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for suffix in (".yaml", ".yml", ".json"):
        candidate = SPEC_DIR / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.y*ml")))
    raise FileNotFoundError(f"no experiment spec {name_or_path!r} (a file, or one of: {known})")


def load_spec(name_or_path: str | Path, override: dict | None = None) -> ExperimentSpec:
    """Read and validate a spec; `override` is deep-merged first (e.g. a CPU-sized base)."""
    path = spec_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML/JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an experiment spec is a mapping, got {type(raw).__name__}")
    try:
        return ExperimentSpec.model_validate(deep_merge(raw, override or {}))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
