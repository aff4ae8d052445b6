"""`make ui`: Prefect's server on 127.0.0.1 plus deployments of the flows, in one command.

The server uses the project's Prefect home (data/prefect), so runs started from the command line
(`make extract`, `make train`) show up next to the runs started from the UI's parameter forms.
It also installs Prefect's automation for zombie runs (`flows.ops.orphans`): a run whose heartbeats
stop (its process was killed) becomes Crashed. Ctrl-C stops both. It listens on 127.0.0.1 only
and has no API auth; `make cluster` (flows.ops.cluster) is the server other machines may reach, and it
refuses clients without its auth string.
"""

from __future__ import annotations

import argparse
import os
import sys

import flows  # noqa: F401  (Prefect settings)
from flows.ops.server import DEFAULT_PORT, start_prefect_server, stop, wait_until_healthy

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ops.serve", description=__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK:
        # This server has no API auth: anyone who reaches it could run flows on this machine.
        parser.error(
            f"--host {args.host}: `make ui` serves 127.0.0.1 only, without auth; for a server "
            "other machines reach, with an auth string, use `make cluster HOST=0.0.0.0`"
        )
    server, api = start_prefect_server(args.host, args.port)
    try:
        wait_until_healthy(api, server)
        os.environ["PREFECT_API_URL"] = api  # before prefect is imported by the flows
        from prefect import serve

        from flows.evaluate import evaluate_flow
        from flows.experiment import ExperimentParams, experiment_flow
        from flows.extract_flow import extract_flow
        from flows.extract_params import ExtractParams
        from flows.ops.orphans import ensure_zombie_automation
        from flows.train import train_flow
        from student.train_params import TrainParams

        ensure_zombie_automation()  # runs whose heartbeats stop become Crashed
        print(
            f"Prefect UI: http://{args.host}:{args.port}  (deployments: extract, train, evaluate, experiment)"
        )
        serve(
            extract_flow.to_deployment(
                name="extract", parameters={"params": ExtractParams().model_dump(mode="json")}
            ),
            train_flow.to_deployment(
                name="train", parameters={"params": TrainParams().model_dump(mode="json")}
            ),
            evaluate_flow.to_deployment(name="evaluate"),
            experiment_flow.to_deployment(
                name="experiment",
                parameters={"params": ExperimentParams().model_dump(mode="json")},
            ),
        )
    finally:
        stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
