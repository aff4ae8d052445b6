"""Progress you can watch: a console bar (tqdm: count, rate, time left) and, inside a Prefect
run, the same fraction as the run's progress artifact (the UI's Artifacts tab).

The extraction counts images across all the shards of one run: the flow creates one
`RunProgress` and registers it under its flow-run id, and the shard tasks running in the flow's
process (threads) advance it batch by batch. Tasks in other processes (a Dask cluster) cannot
reach it; there the flow advances it when each shard finishes (`reach`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext
from tqdm import tqdm

# Artifact updates are API calls: at most one per this many seconds (the last one always goes).
ARTIFACT_INTERVAL_S = 2.0


def in_prefect_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class RunProgress:
    """`total` units of work: a tqdm bar on stderr (unless `console` is False) and, inside a
    Prefect run, a progress artifact with `key`. Thread-safe; never goes past `total`."""

    def __init__(self, total: int, desc: str, unit: str, key: str, console: bool = True) -> None:
        self.total = max(0, total)
        self.bar = tqdm(
            total=self.total, desc=desc, unit=unit, dynamic_ncols=True, disable=not console
        )
        self.done = 0
        self.description = f"{desc}: {self.total} {unit}"
        self._lock = threading.Lock()
        self._published_at = 0.0
        self.artifact: UUID | None = None
        if in_prefect_run():
            self.artifact = create_progress_artifact(0.0, key=key, description=self.description)

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * self.done / self.total

    def advance(self, n: int) -> None:
        """`n` more units are done."""
        with self._lock:
            self._advance(n)

    def reach(self, done: int) -> None:
        """At least `done` units are done (a count from elsewhere; never moves back)."""
        with self._lock:
            self._advance(done - self.done)

    def _advance(self, n: int) -> None:
        step = max(0, min(n, self.total - self.done))
        if step:
            self.done += step
            self.bar.update(step)
            self._publish(force=self.done == self.total)

    def finish(self) -> None:
        """All done: the bar and the artifact at 100 %, the bar closed."""
        self.reach(self.total)
        with self._lock:
            self._publish(force=True)
        self.bar.close()

    def _publish(self, force: bool) -> None:
        if self.artifact is None:
            return
        now = time.monotonic()
        if force or now - self._published_at >= ARTIFACT_INTERVAL_S:
            self._published_at = now
            update_progress_artifact(self.artifact, self.percent)


_BY_FLOW_RUN: dict[str, RunProgress] = {}


@contextlib.contextmanager
def registered(progress: RunProgress) -> Iterator[RunProgress]:
    """Make `progress` the current flow run's, for its tasks in this process."""
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else None
    if run_id:
        _BY_FLOW_RUN[run_id] = progress
    try:
        yield progress
    finally:
        if run_id:
            _BY_FLOW_RUN.pop(run_id, None)


def current_run_progress() -> RunProgress | None:
    """The progress the running task's flow run registered in this process, if any."""
    context = TaskRunContext.get()
    run_id = context.task_run.flow_run_id if context else None
    return _BY_FLOW_RUN.get(str(run_id)) if run_id else None


def epochs_done(metrics_path: Path) -> int:
    """The last epoch metrics.jsonl records (0 when absent); a line being written is skipped."""
    if not metrics_path.is_file():
        return 0
    last = 0
    for line in metrics_path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            last = max(last, int(json.loads(line).get("epoch", 0)))
    return last


@contextlib.contextmanager
def watching_epochs(
    metrics_path: Path, progress: RunProgress, poll_s: float = 1.0
) -> Iterator[None]:
    """Advance `progress` to the epochs metrics.jsonl records while the body trains (in this
    process or under torchrun: the file is the one record both write)."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_s):
            progress.reach(epochs_done(metrics_path))

    thread = threading.Thread(target=watch, name="epoch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        progress.reach(epochs_done(metrics_path))
