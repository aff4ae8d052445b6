"""The Prefect API a command-line run reports to, and the temporary server behind it.

With `PREFECT_API_URL` set (`make ui`, a team server) runs report there. Without it, Prefect
itself would start a temporary server (uvicorn) as a child of the run; a run ended by SIGKILL or
SIGTERM left that child behind with parent 1. This module starts the same server, Prefect's own
`create_app` on 127.0.0.1 with the project's database, but tied to the run's life: the kernel
signals it when the run's process dies (PR_SET_PDEATHSIG), however that happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

from flows.ops.server import stop, wait_until_healthy

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_temporary_server() -> tuple[subprocess.Popen, str]:
    """Prefect's API (no UI) on a free local port, as Prefect's own temporary server runs it."""
    import prefect
    from prefect.settings import get_current_settings

    port = _free_port()
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
        "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    return process, f"http://127.0.0.1:{port}/api"


def _send_pending_logs_and_events(timeout_s: float = 30) -> None:
    """Prefect sends logs and events from background workers that it drains at interpreter exit;
    the temporary server stops before that, so drain them while it still answers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout_s)


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The API URL runs in this block report to: the configured one, else a temporary server
    that lives exactly as long as the block (and never longer than this process)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    configured = get_current_settings().api.url
    if configured:
        yield configured
        return
    process, api = start_temporary_server()
    previous = os.environ.get("PREFECT_API_URL")
    try:
        wait_until_healthy(api, process, timeout_s=180)
        print(f"Prefect: temporary server at {api} (`make ui` shows the runs)", file=sys.stderr)
        os.environ["PREFECT_API_URL"] = api  # child processes (Dask workers) report there too
        with temporary_settings({PREFECT_API_URL: api}):
            yield api
    finally:
        _send_pending_logs_and_events()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        stop(process, timeout_s=10)
