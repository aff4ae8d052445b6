"""Operations as a user meets them: user errors are one line and exit 2 (bugs keep their
traceback), a user error inside a flow run is not retried nor printed as a traceback, and
`make ui` installs Prefect's automation that crashes runs whose heartbeats stopped.

(SIGKILL / SIGTERM of a running extraction, the quick rerun with nothing to do, UI logs and
preview pictures are tested end to end in test_extract_flow.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.ops.command import run_command
from pipeline.datasets.registry import UnknownDatasetError
from pipeline.errors import MissingInputError, UserError

PROJECT = Path(__file__).resolve().parents[1]


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "LFI_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["flows.extract", "--dataset", "nope"], "error: unknown dataset 'nope'; registered: "),
        (["pipeline", "shards", "--split", "test"], "error: dataset 'sample' has splits "),
    ],
)
def test_user_errors_are_one_message_and_exit_2(
    command: list[str], message: str, tmp_path: Path
) -> None:
    result = _run(*command, tmp_path=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Prefect" not in result.stderr, "found before any Prefect server starts"


def test_train_and_evaluate_user_errors_too(capsys, tmp_path: Path, monkeypatch) -> None:
    from flows.evaluate import main as evaluate_main
    from flows.train import main as train_main

    monkeypatch.setenv("LFI_DATA_DIR", str(tmp_path / "data"))
    missing_raw = ["--dataset", "pacs", "--shards-root", str(tmp_path / "shards")]
    assert run_command(train_main, missing_raw) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'pacs' was expected at ") and "Traceback" not in err
    assert run_command(evaluate_main, ["--run", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a run folder (no config.json)" in err


def test_bad_parameters_name_the_flag(capsys) -> None:
    from flows.extract import main as extract_main
    from flows.train import main as train_main

    assert run_command(extract_main, ["--shard-size", "0", "--quant", "3bit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --shard-size: Input should be greater than or equal to 1")
    assert "--quant: Input should be '4bit', '8bit' or 'none' (got '3bit')" in err
    assert run_command(train_main, ["--fraction", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("error: --fraction: Input should be less than")


def test_bugs_keep_their_traceback() -> None:
    def buggy(argv: list[str] | None) -> int:
        return {}["missing"]

    with pytest.raises(KeyError):
        run_command(buggy, [])
    assert issubclass(UnknownDatasetError, KeyError), "callers catching KeyError still do"


@pytest.fixture
def api(prefect_server: str) -> Iterator[str]:
    """In-process Prefect calls go to the test server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server


PROBE = """
import sys
import flows  # the project's Prefect settings, as `python -m flows.<name>` has them
from prefect import flow, task
from flows.ops.command import prefect_session, run_command
from flows.retries import retry_unless_user_error
from pipeline.errors import MissingInputError

@task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_unless_user_error)
def find_input():
    print("attempt", file=sys.stderr)
    raise MissingInputError("no map-cache entry for sample/train; run make extract first")

@flow(name="user-error-probe")
def probe():
    find_input()

def main(argv):
    with prefect_session():
        probe()
    return 0

sys.exit(run_command(main))
"""


@pytest.mark.slow
def test_user_error_in_a_run_is_not_retried_nor_a_traceback(
    prefect_server: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PREFECT_API_URL": prefect_server}
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)  # the project's default console
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "attempt",
        "error: no map-cache entry for sample/train; run make extract first",
    ]
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as c:
        (run,) = c.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["user-error-probe"]))
        )
        assert run.state.is_failed(), "Prefect still records the failure (and its traceback)"


def test_a_user_error_is_a_user_error() -> None:
    from pipeline.cache import CacheMismatchError
    from pipeline.datasets.registry import DatasetMissingError, UnknownSplitError
    from student.model import WeightsUnavailableError
    from teacher.weights.loading import TeacherWeightsError

    for error in (
        DatasetMissingError, UnknownSplitError, CacheMismatchError, TeacherWeightsError,
        WeightsUnavailableError, MissingInputError,
    ):  # fmt: skip
        assert issubclass(error, UserError), error
    assert str(UnknownDatasetError("unknown dataset 'x'")) == "unknown dataset 'x'"  # not quoted


def test_zombie_automation_is_prefects_recipe_installed_once(api: str) -> None:
    from prefect.client.orchestration import get_client

    from flows.ops.orphans import ZOMBIE_AUTOMATION, ensure_zombie_automation

    ensure_zombie_automation()
    ensure_zombie_automation()
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    trigger = automation.trigger
    assert trigger.posture == "Proactive"
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert "prefect.flow-run.heartbeat" in trigger.expect
    assert "prefect.flow-run.Completed" in trigger.expect
    assert trigger.within.total_seconds() == 3 * 180  # three missed default heartbeats
    (action,) = automation.actions
    assert action.type == "change-flow-run-state" and action.state == "CRASHED"
