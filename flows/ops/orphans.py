"""Flow runs whose process died without reporting (SIGKILL, OOM, node loss) become Crashed.

A killed process cannot report its own end, so its run would show Running forever. Two ways out,
both built on what Prefect records:

- Prefect's own mechanism, for a long-lived server (`make ui`, a team server): every flow run
  emits a `prefect.flow-run.heartbeat` event (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 180 s by
  default), and an automation with a proactive trigger marks a run Crashed when the next one
  does not come (`ensure_zombie_automation`, installed by `make ui`).
- Command-line runs use a temporary server that lives only as long as the run, so nothing is
  there to notice the silence. Each run therefore labels itself with its host, pid and the
  pid's start time (`record_process`, an on_running hook), and the next command-line run marks
  every Running run whose process is gone as Crashed before it starts (`mark_orphaned_runs`).
  Runs of other hosts are marked only once their heartbeats have stopped for three periods.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

HOST_LABEL = "lfi.host"
PID_LABEL = "lfi.pid"
PID_STARTED_LABEL = "lfi.pid-started"  # a pid is reused; its start time tells two apart
ZOMBIE_AUTOMATION = "lfi: crash flow runs whose heartbeats stopped"
MISSED_HEARTBEATS = 3

logger = logging.getLogger(__name__)


def _process_started(pid: int) -> str:
    return f"{psutil.Process(pid).create_time():.3f}"


def process_labels() -> dict[str, str]:
    """This process, as the labels of the flow runs it executes."""
    pid = os.getpid()
    return {HOST_LABEL: socket.gethostname(), PID_LABEL: str(pid), PID_STARTED_LABEL: _process_started(pid)}  # fmt: skip


def record_process(flow: Any, flow_run: Any, state: Any) -> None:
    """on_running hook: label the run with the process that executes it."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(flow_run.id, process_labels())
    except Exception:  # a label is bookkeeping: never fail the run for it
        logger.warning("could not label flow run %s with its process", flow_run.id, exc_info=True)


def process_alive(labels: dict[str, Any]) -> bool:
    """Whether the process named by a run's labels (on this host) still runs."""
    try:
        return _process_started(int(labels[PID_LABEL])) == labels.get(PID_STARTED_LABEL)
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return False


def _last_heartbeat(client: Any, flow_run_id: Any, since: datetime) -> datetime | None:
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    page = client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        ),
        limit=1,
    )
    return max((e.occurred for e in page.events), default=None)


def _orphan_reason(client: Any, run: Any, host: str, silence: timedelta) -> str | None:
    """Why `run` (Running or Pending) has no live process behind it, or None if it may have."""
    labels = run.labels or {}
    if labels.get(HOST_LABEL) == host:
        if process_alive(labels):
            return None
        return f"its process ({host} pid {labels.get(PID_LABEL)}) ended without reporting"
    # Another host (or no label): only Prefect's heartbeats tell. No heartbeat ever: unknown.
    now = datetime.now(UTC)
    started = run.start_time or run.expected_start_time
    if started is None or now - started < silence:
        return None
    if _last_heartbeat(client, run.id, since=started - timedelta(minutes=1)) is None:
        return None
    if _last_heartbeat(client, run.id, since=now - silence) is not None:
        return None
    return f"no heartbeat for {int(silence.total_seconds())} s"


def mark_orphaned_runs() -> list[str]:
    """Set every Running/Pending flow run whose process is gone to Crashed; their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import get_current_settings
    from prefect.states import Crashed

    period = max(get_current_settings().flows.heartbeat_frequency or 180, 30)
    silence = timedelta(seconds=MISSED_HEARTBEATS * period)
    host = socket.gethostname()
    marked = []
    with get_client(sync_client=True) as client:
        live = FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=live)), limit=200
        )
        for run in runs:
            reason = _orphan_reason(client, run, host, silence)
            if reason is None:
                continue
            message = (
                f"Crashed: {reason} (SIGKILL, out of memory or node loss); found by a later run"
            )
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            marked.append(run.name)
    return marked


def ensure_zombie_automation(within_s: int | None = None) -> None:
    """Prefect's recipe for zombie flow runs, once per server: a run whose heartbeat is not
    followed by another heartbeat or a final state within `within_s` becomes Crashed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import get_current_settings

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
        return
    except ValueError:
        pass  # not there yet
    period = max(get_current_settings().flows.heartbeat_frequency or 180, 30)
    finals = ("Completed", "Failed", "Cancelled", "Crashed")
    Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in finals)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s or MISSED_HEARTBEATS * period),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message="Crashed: its heartbeats stopped (process killed, out of memory or node loss)",
            )
        ],
    ).create()
