"""Evaluate a finished run: top-1 on a split, per-domain accuracy with its variance, and the
cosine of C_VFM, C_VLM and C_AGT to human annotation maps (or the box mask standing in).

    python -m flows.evaluate --run demo --dataset sample --split val     (what `make eval` runs)

On ImageFolder domain sets (PACS, VLCS) `--split all` reports every domain: with a model trained
on some domains, the held-out domain's accuracy is the leave-one-domain-out / zero-shot figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

import flows  # noqa: F401  (Prefect settings)
from flows.cli_args import add_model_arguments, parse_model
from flows.inputs import check_shards_obtainable
from flows.ops.command import prefect_session, run_command
from flows.ops.orphans import record_process
from pipeline.errors import MissingInputError
from pipeline.paths import runs_root, shards_root
from pipeline.shards.build import ensure_shards
from pipeline.shards.config import ShardsConfig
from pipeline.shards.integrity import check_shard_files
from student.run import evaluate_run


class EvalParams(BaseModel):
    run: str = Field(description="run name under runs_root (or a path)")
    dataset: str = Field("sample", description="dataset whose split is evaluated")
    split: str = Field("val", description="split (a domain, or 'all', on domain sets)")
    shards_root: str = Field(str(shards_root()))
    runs_root: str = Field(str(runs_root()))
    device: str = "auto"
    cache_entry: str | None = Field(
        None, description="map-cache entry of this split for C_VLM (default: the run's own)"
    )
    human_maps: str | None = Field(
        None, description="C_HUM annotation file (data/README.md); None: the box mask stands in"
    )

    def run_dir(self) -> Path:
        path = Path(self.run)
        return path if path.is_dir() else Path(self.runs_root) / self.run


def check_run(params: EvalParams) -> None:
    if not (params.run_dir() / "config.json").is_file():
        raise MissingInputError(
            f"{params.run_dir()} is not a run folder (no config.json); "
            f"runs are the folders of {params.runs_root}"
        )


@task
def evaluate_task(params: EvalParams) -> dict:
    check_run(params)
    outcome = ensure_shards(
        ShardsConfig(dataset=params.dataset, split=params.split, shards=Path(params.shards_root))
    )
    check_shard_files(outcome.out_dir, outcome.index)  # once, before the loader's workers start
    return evaluate_run(
        params.run_dir(), params.split, Path(params.shards_root) / params.dataset, params.device,
        cache_entry=params.cache_entry,
        human_maps=Path(params.human_maps) if params.human_maps else None,
    )  # fmt: skip


def summary_markdown(params: EvalParams, result: dict) -> str:
    """The `eval-summary` artifact: the headline metrics, and the cosine to C_HUM where the run
    computed it (classification; dense runs have no human-alignment section)."""
    lines = [f"# {params.run} on {params.dataset}/{params.split}"]
    if "top1" in result:
        lines.append(f"- top-1: {result['top1']:.4f}")
    # dense runs: COCOeval's numbers (bbox_mAP, bbox_AP50, ..., segm_mAP, ...)
    lines += [f"- {k}: {v:.4f}" for k, v in result.items() if k.startswith(("bbox_", "segm_"))]
    for domain, accuracy in sorted(result.get("domains", {}).items()):
        lines.append(f"- {domain}: {accuracy:.4f}")
    if result.get("domain_variance") is not None:
        lines.append(f"- variance across domains: {result['domain_variance']:.6f}")
    human = result.get("human_alignment")
    if human is not None:
        lines += [
            f"## Cosine to {human['reference']} (mean +- std over images)",
            "| interaction | cosine | images |",
            "| --- | --- | --- |",
        ]
        for name, value in human["cosine"].items():
            cell = "n/a" if value is None else f"{value['mean']:.3f} +- {value['std']:.3f}"
            lines.append(f"| {name} | {cell} | {0 if value is None else value['n']} |")
        lines.append(f"\nfigure: `{human['figure']}`")
    return "\n".join(lines)


@flow(name="evaluate-ivit", on_running=[record_process])
def evaluate_flow(params: EvalParams) -> dict:
    result = evaluate_task(params)
    create_markdown_artifact(summary_markdown(params, result), key="eval-summary")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.evaluate", description=__doc__)
    add_model_arguments(parser, EvalParams)
    params = parse_model(EvalParams, parser.parse_args(argv))
    check_run(params)
    check_shards_obtainable(params.dataset, params.split, Path(params.shards_root))
    with prefect_session():
        result = evaluate_flow(params)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
