"""The extraction flow's parameters (the Prefect form and the command line's flags).

A module of their own, not flows/extract.py: `python -m flows.extract` runs that file as
`__main__`, and classes defined there are pickled by value when a Dask runner ships a task's
parameters, which pydantic models do not survive. Imported from here, they travel by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field

from pipeline.paths import cache_root
from pipeline.sections import SectionedParams
from pipeline.shards.config import ShardsConfig
from teacher.config import Prompt, TeacherConfig
from teacher.maps.numerics import DEFAULT_MAX_NON_FINITE


class TeacherParams(TeacherConfig):
    """The teacher section of the form: `TeacherConfig`, with the prompt left to the dataset."""

    prompt: Prompt | None = Field(
        None, description="None: 'dense' (Eq. 12) for detection datasets, else 'prompt1'"
    )


class ExtractParams(SectionedParams):
    """Everything an extraction run needs; Prefect renders it as the deployment's form, one
    section per concern. Every field of `shards` and `teacher` is also settable by its flat name
    (`dataset`, `quant`, `teacher` for `teacher.model`, `shards_root` for `shards.shards`)."""

    model_config = ConfigDict(extra="forbid")
    flat_sections: ClassVar[tuple[str, ...]] = ("shards", "teacher")
    flat_renames: ClassVar[dict[str, tuple[str, str]]] = {
        "teacher": ("teacher", "model"),
        "shards_root": ("shards", "shards"),
    }

    shards: ShardsConfig = Field(
        default_factory=ShardsConfig, description="the dataset split and its shards"
    )
    teacher: TeacherParams = Field(
        default_factory=TeacherParams, description="the VLM, its prompt and its attention"
    )
    cache_root: str = Field(str(cache_root()), description="local path or s3:// URL")
    concurrency: int = Field(0, ge=0, description="shards at once; 0 = one per GPU (1 on CPU)")
    previews: int = Field(6, ge=0, description="overlay PNGs saved in the entry")
    max_non_finite: float = Field(
        DEFAULT_MAX_NON_FINITE, ge=0, le=1,
        description="fail the run when more than this fraction of its rows is non-finite",
    )  # fmt: skip

    def teacher_config(self) -> TeacherConfig:
        """The teacher section with its prompt resolved: what the cache key records."""
        fields = self.teacher.model_dump(exclude={"prompt"})
        return TeacherConfig(**fields, prompt=self.resolved_prompt())

    def resolved_prompt(self) -> Prompt:
        """The prompt asked for, else the dataset's own: dense for detection datasets."""
        if self.teacher.prompt is not None:
            return self.teacher.prompt
        from pipeline.datasets.registry import get_entry, load_registry

        dataset = self.shards.dataset
        known = dataset in load_registry()
        return "dense" if known and get_entry(dataset).task == "detection" else "prompt1"

    def shard_dir(self) -> Path:
        return self.shards.shard_dir()
