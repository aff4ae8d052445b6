"""The experiment flow (docs/experiments.md): a spec's grid of member runs, each its own flow run,
then the paper-style tables and the convergence figure under data/experiments/<name>/.

    python -m flows.experiment --spec table1                      (what `make experiment` runs)
    python -m flows.experiment --spec table2 --override '{"base": {"epochs": 2}}'

Resumable: a member whose record (runs/<member>/member.json) names its current fingerprint is
not rerun; a member stopped mid-way continues from its last checkpoint (the train flow's
resume). The report is rewritten after every member, so it always shows what is finished.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

import flows  # noqa: F401  (Prefect settings)
from experiments.aggregate import DONE, aggregate, is_done, member_dir
from experiments.report import results_markdown, write_report
from experiments.spec import ExperimentSpec, Member, TeacherEntry, load_spec, members
from flows.cli_args import add_model_arguments, parse_model
from pipeline.paths import cache_root, experiments_root, shards_root


class ExperimentParams(BaseModel):
    """An experiment run; Prefect renders it as the deployment's form."""

    spec: str = Field("table1", description="a spec under experiments/specs/ or a file path")
    override: dict = Field(
        default_factory=dict,
        description="deep-merged into the spec, e.g. {'base': {'epochs': 2}, 'seeds': [0]}",
    )
    out_root: str = Field(str(experiments_root()), description="reports and member runs")
    shards_root: str = Field(str(shards_root()))
    cache_root: str = Field(str(cache_root()), description="local path or s3:// URL")
    device: str = Field("auto", description="auto | cpu | cuda (members and their evaluations)")


def resolve_teacher(spec: ExperimentSpec, entry: TeacherEntry, params: ExperimentParams) -> str:
    """The train split's cache entry of a teacher: given, or extracted (the extract flow skips
    shards already committed, so a second call only looks the entry up)."""
    if entry.cache_entry is not None:
        return entry.cache_entry
    from flows.extract_flow import run_extract
    from flows.extract_params import ExtractParams

    path = None
    for split in ("train", "val"):
        extract = ExtractParams(
            **{
                **(entry.extract or {}),
                "dataset": spec.dataset,
                "split": split,
                "shards_root": params.shards_root,
                "cache_root": params.cache_root,
            },
        )
        summary = run_extract(extract)
        path = summary["path"] if split == "train" else path
    assert path is not None
    return path


def train_member(
    spec: ExperimentSpec,
    member: Member,
    cache_entry: str | None,
    root: Path,
    params: ExperimentParams,
) -> None:
    """One member: the train flow as a subflow run, then the extra splits' evaluations."""
    from flows.evaluate import EvalParams, evaluate_flow
    from flows.train import train_flow
    from student.train_params import TrainParams

    train = TrainParams(
        **{
            **member.params,
            "dataset": spec.dataset,
            "run": member.name,
            "runs_root": str(root / "runs"),
            "shards_root": params.shards_root,
            "cache_root": params.cache_root,
            "cache_entry": cache_entry,
            "device": params.device,
        },
    )
    train_flow.with_options(flow_run_name=f"{spec.name}/{member.name}")(train)
    for split in spec.eval_splits:
        evaluate_flow.with_options(flow_run_name=f"{spec.name}/{member.name}/{split}")(
            EvalParams(
                run=str(member_dir(root, member)),
                dataset=spec.dataset,
                split=split,
                shards_root=params.shards_root,
                device=params.device,
            )
        )


@flow(name="experiment-member", log_prints=True)
def member_flow(
    spec: ExperimentSpec, member: Member, cache_entry: str | None, params: ExperimentParams
) -> str:
    root = Path(params.out_root) / spec.name
    train_member(spec, member, cache_entry, root, params)
    record = {
        **member.model_dump(),
        "name": member.name,
        "fingerprint": member.fingerprint(),
        "cache_entry": cache_entry,
    }
    (member_dir(root, member) / DONE).write_text(json.dumps(record, indent=1))
    return member.name


@flow(name="experiment", log_prints=True)
def experiment_flow(params: ExperimentParams) -> dict:
    """Run every unfinished member of the spec, then write the report."""
    logger = get_run_logger()
    spec = load_spec(params.spec, params.override)
    root = Path(params.out_root) / spec.name
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.json").write_text(spec.model_dump_json(indent=1))
    grid = members(spec)
    pending = [m for m in grid if not is_done(root, m, spec.eval_splits)]
    logger.info(
        "%s: %d members, %d finished, %d to run",
        spec.name,
        len(grid),
        len(grid) - len(pending),
        len(pending),
    )
    entries: dict[str, str] = {}
    for member in pending:
        entry = None
        if member.teacher is not None:
            if member.teacher not in entries:
                entries[member.teacher] = resolve_teacher(
                    spec, spec.teachers[member.teacher], params
                )
            entry = entries[member.teacher]
        member_flow.with_options(flow_run_name=f"{spec.name}:{member.name}")(
            spec, member, entry, params
        )
        write_report(aggregate(spec, root), root)
    results = aggregate(spec, root)
    paths = write_report(results, root)
    create_markdown_artifact(
        results_markdown(results), key="experiment-results", description=spec.title
    )
    return {
        "results": {k: str(v) for k, v in paths.items()},
        "ran": [m.name for m in pending],
        "missing": results["missing"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.experiment", description=__doc__)
    add_model_arguments(parser, ExperimentParams)
    params = parse_model(ExperimentParams, parser.parse_args(argv))
    outcome = experiment_flow(params)
    print(Path(outcome["results"]["results.md"]).read_text())
    for name, path in outcome["results"].items():
        print(f"{name:16s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
