"""Teacher maps for a dataset split into the map cache: the command line of the extraction flow.

    python -m flows.extract --dataset sample --teacher tiny        (what `make extract` runs)

A fully committed entry is answered here, from the cache and the checkpoint's files, without
importing Prefect or torch; otherwise the flow (flows/extract_flow.py) runs under a Prefect
session.
"""

from __future__ import annotations

import argparse
import sys

import flows  # noqa: F401  (Prefect settings)
from flows.cli_args import add_model_arguments, parse_model
from flows.extract_entry import entry_location
from flows.extract_outcome import committed_summary, print_outcome
from flows.extract_params import ExtractParams
from flows.inputs import check_shards_obtainable
from flows.ops.command import prefect_session, run_command
from teacher import BASELINES


def check_teacher(params: ExtractParams) -> None:
    """Before the flow: the teacher's checkpoint can be had (the hub's reachability is decided
    here, once; offline, the local Hugging Face cache must hold it), else TeacherWeightsError
    says how to supply it, in seconds, instead of a task failing under retries."""
    cfg = params.teacher_config()
    if cfg.model in BASELINES:
        return  # box and uniform have no checkpoint (and are valid hub ids: never ask the hub)
    from teacher.weights.loading import load_config_and_processor

    load_config_and_processor(cfg)


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m flows.extract", description=__doc__)
    add_model_arguments(parser, ExtractParams)
    parser.add_argument("--runner", choices=["threads", "dask"], default="threads")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument(
        "--which-entry", action="store_true", help="print the entry's location and exit (no run)"
    )
    args = parser.parse_args(argv)
    params = parse_model(ExtractParams, args)
    shards = params.shards
    check_shards_obtainable(shards.dataset, shards.split, shards.shards, shards.root)
    if args.which_entry:
        print(entry_location(params))
        return 0
    summary = committed_summary(params)
    if summary is not None:  # nothing to compute: no Prefect server, no run
        print_outcome(summary, "nothing to do: every shard of this entry is committed")
        return 0
    check_teacher(params)  # TeacherWeightsError is a user error: one line from run_command
    from flows.extract_flow import run_extract  # Prefect and the flow: only when there is work

    with prefect_session():
        summary = run_extract(params, args.runner, args.workers)
    print_outcome(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
