"""Register the flows with a Prefect server's work pool, for workers on other machines/GPUs.

    export PREFECT_API_URL=http://<server>:4200/api PREFECT_API_AUTH_STRING=<the server's>
    prefect work-pool create gpus --type process
    python -m flows.ops.deploy --pool gpus
    CUDA_VISIBLE_DEVICES=0 prefect worker start --pool gpus --limit 1   # one worker per GPU

The deployments run this checkout's code (a process work pool on machines that share it, or
the same path on each); launch several `extract` runs with the same parameters and they split
the shards between them through the cache's per-shard claims (`python -m flows.ops.launch --runs N`).
`python -m flows.ops.cluster` (`make cluster`) does all of this on one machine.
"""

from __future__ import annotations

import argparse
import sys

import flows  # noqa: F401  (Prefect settings)
from pipeline.paths import PROJECT_ROOT

ENTRYPOINTS = {
    "extract": "flows/extract_flow.py:extract_flow",
    "train": "flows/train.py:train_flow",
    "evaluate": "flows/evaluate.py:evaluate_flow",
    "experiment": "flows/experiment.py:experiment_flow",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ops.deploy", description=__doc__)
    parser.add_argument("--pool", required=True, help="a process work pool on the server")
    args = parser.parse_args(argv)
    from prefect import Flow

    for name, entrypoint in ENTRYPOINTS.items():
        flow = Flow.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint)
        flow.deploy(
            name=name, work_pool_name=args.pool, print_next_steps=False, ignore_warnings=True
        )
        print(f"deployed {flow.name}/{name} on work pool {args.pool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
