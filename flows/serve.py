"""`make ui`: Prefect's server on 127.0.0.1 plus deployments of the flows, in one command.

The server uses the project's Prefect home (data/prefect), so runs started from the command line
(`make extract`, `make train`) show up next to the runs started from the UI's parameter forms.
Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request

import flows  # noqa: F401  (Prefect settings)


def wait_for(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"prefect server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"prefect server did not answer at {url} within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__)
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    api = f"http://{args.host}:{args.port}/api"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            args.host,
            "--port",
            str(args.port),
        ],
        env={**os.environ, "PREFECT_API_URL": ""},
    )
    try:
        wait_for(f"{api}/health", server)
        os.environ["PREFECT_API_URL"] = api
        from prefect import serve

        from flows.evaluate import evaluate_flow
        from flows.extract import ExtractParams, extract_flow
        from flows.train import TrainParams, train_flow

        print(
            f"Prefect UI: http://{args.host}:{args.port}  (deployments: extract, train, evaluate)"
        )
        serve(
            extract_flow.to_deployment(
                name="extract", parameters={"params": ExtractParams().model_dump(mode="json")}
            ),
            train_flow.to_deployment(
                name="train", parameters={"params": TrainParams().model_dump(mode="json")}
            ),
            evaluate_flow.to_deployment(name="evaluate"),
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
