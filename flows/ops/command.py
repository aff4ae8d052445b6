"""How a `python -m flows.<name>` command meets its user, whatever the flow.

- A user error (`pipeline.errors.UserError`: unknown dataset, missing raw data or split, bad
  parameters) is one `error: ...` line and exit code 2; any other exception is a bug and keeps its
  traceback. Inside a flow run, Prefect still records the user error's traceback in the UI.
- SIGTERM or SIGHUP (what `timeout`, schedulers and cancellations send) ends the command with no
  process left behind: Prefect first marks the run Crashed (its own SIGTERM bridge), then the
  temporary Prefect server and any other child (Dask workers) are stopped before exiting.
- Runs of earlier commands whose process died without reporting are marked Crashed before the
  new run starts (`flows.ops.orphans`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from pipeline.errors import UserError

USER_ERROR_EXIT = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def stop_children(timeout_s: float = 5.0) -> None:
    """Terminate every descendant of this process (then kill what is left after `timeout_s`)."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _on_stop_signal(signum: int, frame: Any) -> None:
    # Reached after Prefect's own SIGTERM handling marked the run Crashed and re-sent the signal
    # (or directly, outside a run). os._exit: interpreter exit would wait for the task threads.
    stop_children()
    sys.stderr.flush()
    os._exit(128 + signum)


class _HideUserErrorTracebacks(logging.Filter):
    """Console only: a user error is printed once, as one line, by `run_command`; Prefect's
    own report of it (a traceback, "Finished in state Failed('... MissingInputError: ...')")
    stays in the run's logs in the UI."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, UserError):
            return False
        if record.levelno < logging.ERROR or not record.name.startswith("prefect."):
            return True
        return not re.search(rf"\b({'|'.join(_names(UserError))}): ", record.getMessage())


def _names(cls: type) -> list[str]:
    """A class's name and its subclasses' names (the user errors Prefect's messages name)."""
    return [cls.__name__, *(n for sub in cls.__subclasses__() for n in _names(sub))]


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    quiet = _HideUserErrorTracebacks()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def run_command(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a flow command's `main` with the behaviour above; returns its exit code."""
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    try:
        with _quiet_console():
            return main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def prefect_session() -> Iterator[str]:
    """The Prefect API for this command's run (a temporary server unless one is configured),
    after marking runs of earlier commands whose process died as Crashed."""
    from flows.ops.orphans import mark_orphaned_runs
    from flows.ops.prefect_api import prefect_api

    # Again here: a command that imports Prefect only when there is work (flows.extract) gets
    # Prefect's console handlers now, after run_command filtered the handlers it found.
    with prefect_api() as api, _quiet_console():
        try:
            marked = mark_orphaned_runs()
        except Exception:  # bookkeeping of earlier runs must not stop this one
            logging.getLogger(__name__).warning("could not check earlier runs", exc_info=True)
        else:
            if marked:
                names = ", ".join(marked)
                print(f"marked as Crashed (their process is gone): {names}", file=sys.stderr)
        yield api
