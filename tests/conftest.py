"""Shared fixtures: a real Prefect server on 127.0.0.1, and isolation of Prefect's home.

Every test session gets its own PREFECT_HOME under pytest's tmp dir, so tests never touch the
developer's `data/prefect` database.
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.ops.server import start_prefect_server, stop, wait_until_healthy


def pytest_configure(config: pytest.Config) -> None:
    # Before any test imports prefect: flows run in tests use a throwaway home and database.
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lfi-prefect-home-")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


REPO_ROOT = Path(__file__).resolve().parents[1]


def modules_from_outside() -> list[str]:
    """Modules loaded from neither the virtual environment, the repository, the standard
    library nor a temporary folder: a package that a fresh machine's `make setup` would not
    give (the base interpreter's site-packages, a stray PYTHONPATH)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    allowed = [
        Path(sys.prefix).resolve(),
        REPO_ROOT,
        stdlib,
        Path(sysconfig.get_paths()["platstdlib"]).resolve(),
        Path(tempfile.gettempdir()).resolve(),
    ]
    refused = [stdlib / "site-packages", stdlib / "dist-packages"]
    outside = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        inside = any(path.is_relative_to(root) for root in allowed)
        if not inside or any(path.is_relative_to(root) for root in refused):
            outside.append(f"{name} ({path})")
    return sorted(outside)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    outside = modules_from_outside()
    if outside:
        print("\nerror: imported from outside .venv and the repository:\n  " + "\n  ".join(outside))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Prefect home (and database) of `prefect_server`: a command run with this home and no
    PREFECT_API_URL records its runs, through its own temporary server, where that server
    reads them."""
    return tmp_path_factory.mktemp("prefect-server")


@pytest.fixture(scope="session")
def prefect_server(prefect_server_home: Path) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 with its own home; yields the API URL."""
    home = prefect_server_home
    with (home / "server.log").open("w") as log:
        process, api = start_prefect_server("127.0.0.1", free_port(), home=home, log=log)
        try:
            wait_until_healthy(api, process, timeout_s=120)
            yield api
        finally:
            # Send the flows' buffered logs while the server still listens (else Prefect's
            # log worker tries at exit and prints "Error logging to API").
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            stop(process)
