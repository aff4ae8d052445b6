"""Start extract runs on a work pool's workers: one run per GPU, all with the same parameters.

    export PREFECT_API_URL=http://<server>:4200/api PREFECT_API_AUTH_STRING=<the auth string>
    python -m flows.ops.launch --runs 2 --wait --dataset sample --teacher tiny --cache-root /shared/cache

The flags are those of `python -m flows.extract` (the same ExtractParams, the same defaults: give
`--shards-root` and `--cache-root` as paths every worker sees, or an s3:// cache). The runs split
the shards through the cache's per-shard claims, so N runs on N workers compute each shard once.
`--wait` follows the runs until they end and exits non-zero unless all of them completed.
"""

from __future__ import annotations

import argparse
import sys
import time

import flows  # noqa: F401  (Prefect settings)
from flows.cli_args import add_model_arguments, parse_model
from flows.extract_params import ExtractParams

DEPLOYMENT = "extract-maps/extract"  # flows.ops.deploy's name for the extract flow


def start_runs(params: ExtractParams, runs: int, deployment: str = DEPLOYMENT) -> list[str]:
    """Create `runs` flow runs of the deployment at once; returns their ids."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        created = [
            client.create_flow_run_from_deployment(
                found.id, parameters={"params": params.model_dump(mode="json")}
            )
            for _ in range(runs)
        ]
    return [str(run.id) for run in created]


def wait_for(run_ids: list[str], timeout_s: float, poll_s: float = 2.0) -> dict[str, str]:
    """Each run's final state name once all are final (or the state they are in at timeout)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            states = {i: client.read_flow_run(i).state for i in run_ids}
            if all(s is not None and s.is_final() for s in states.values()):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(poll_s)
    return {i: (s.name if s is not None else "unknown") for i, s in states.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ops.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--runs", type=int, default=1, help="runs to start (one per GPU)")
    parser.add_argument("--wait", action="store_true", help="follow the runs until they end")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds to --wait")
    add_model_arguments(parser, ExtractParams)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    params = parse_model(ExtractParams, args)
    run_ids = start_runs(params, args.runs)
    for run_id in run_ids:
        print(f"started {DEPLOYMENT} run {run_id}", flush=True)
    if not args.wait:
        return 0
    states = wait_for(run_ids, args.timeout)
    for run_id, state in states.items():
        print(f"run {run_id}: {state}", flush=True)
    return 0 if all(state == "Completed" for state in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
