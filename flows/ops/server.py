"""Starting a local Prefect server and waiting until it answers: for `make ui` and the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

# `make ui` and `make cluster` (their --port); Prefect's own default as well.
DEFAULT_PORT = 4200


def start_prefect_server(
    host: str,
    port: int,
    home: Path | None = None,
    log: IO | None = None,
    auth_string: str | None = None,
) -> tuple[subprocess.Popen, str]:
    """`prefect server start` in its own process session; returns it and its API URL.

    With `auth_string`, the server refuses every API request without HTTP basic auth carrying
    it (Prefect's PREFECT_SERVER_API_AUTH_STRING); only /api/health stays open."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)  # auth only where the caller asks for it
    if auth_string is not None:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        host,
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
    )
    return process, f"http://{host}:{port}/api"


def wait_until_healthy(api: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with code {process.returncode} before answering"
            )
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server did not answer at {api} within {timeout_s} s")


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
