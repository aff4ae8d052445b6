"""docs/scale-out.md's recipe as a user runs it, on 127.0.0.1: `python -m flows.ops.cluster`
(what `make cluster` runs) starts a Prefect server with an auth string, a process work pool, the
deployments of `flows.ops.deploy` and two workers (CUDA_VISIBLE_DEVICES 0 and 1); `python -m
flows.ops.launch` starts extract runs from the deployment; caches are read back with plain zarr and
compared with one single-process run (`reference`, from test_extract_flow, here reporting to the
cluster's server).

- two runs started at once on one cache root: both complete on different workers, every shard is
  committed once, the cache equals the reference, and each run's process loads the teacher once;
- a client without the auth string (or with a wrong one) is refused by the server;
- a worker killed mid-shard: the other worker's run takes the shard over, the cache is identical;
- Ctrl-C stops the cluster: workers, their flow runs and the server are gone.

One cluster serves the whole module; every process it started is killed at the end, also when a
test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import teacher_fixtures
from conftest import free_port
from test_extract_flow import (
    FlowEnv,
    Reference,
    _mid_shard,
    _names,
    _stop,
    assert_same_cache,
    commit_records,
    flow_runs_for,
    only_entry,
    read_json,
    reference,
    table_rows,
    writer_pid,
)

from pipeline.datasets.generated import write_sample_dataset

pytestmark = pytest.mark.slow
tiny_dir = teacher_fixtures.tiny_dir
__all__ = ["reference"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 300


@dataclass
class Cluster:
    process: subprocess.Popen  # python -m flows.ops.cluster
    log: Path
    api: str
    home: Path  # the server's Prefect home (its database)
    auth: str
    server_pid: int
    workers: dict[str, int]  # worker name -> pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def client_env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api, "PREFECT_API_AUTH_STRING": self.auth}


def _kill_tree(pid: int) -> None:
    """SIGKILL the process group of `pid` and of each of its descendants."""
    with contextlib.suppress(psutil.Error):
        for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError):
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)


def _process_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",  # two workers' runs share this machine's cores
        **extra,
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    log = root / "cluster.log"
    auth_file = root / "api-auth"
    command = [sys.executable, "-m", "flows.ops.cluster", "--workers", "2", "--host", "127.0.0.1",
               "--port", str(free_port()), "--home", str(root / "home"),
               "--auth-file", str(auth_file)]  # fmt: skip
    env = _process_env(PREFECT_WORKER_QUERY_SECONDS="1")  # workers pick runs up at once
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)  # the auth file's string, made by the cluster
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    started: list[int] = [process.pid]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        ready = None
        while ready is None:
            assert process.poll() is None, f"cluster exited early:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"cluster not ready:\n{log.read_text()[-4000:]}"
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("cluster ready: "):
                    ready = json.loads(line.removeprefix("cluster ready: "))
            time.sleep(0.5)
        started += [ready["server_pid"], *ready["workers"].values()]
        assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600, "the auth string is private"
        yield Cluster(
            process, log, ready["api"], root / "home", auth_file.read_text().strip(),
            ready["server_pid"], ready["workers"],
        )  # fmt: skip
    finally:
        for pid in reversed(started):  # workers (and their flow runs), server, the cluster
            _kill_tree(pid)
        process.wait()


@pytest.fixture(scope="module")
def flow_env(tmp_path_factory, tiny_dir: Path, cluster: Cluster) -> Iterator[FlowEnv]:
    """test_extract_flow's setting, its runs reporting to the cluster's server (with the auth
    string, as every client of that server must)."""
    root = tmp_path_factory.mktemp("cluster-flows")
    raw = root / "raw"
    write_sample_dataset(raw, train_per_class=2, val_per_class=1)
    (root / "logs").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_API_AUTH_STRING", cluster.auth)  # for this module's clients
        yield FlowEnv(raw, root / "shards", tiny_dir, cluster.api, cluster.home, root / "logs")


def launch(cluster: Cluster, env: FlowEnv, cache_root: Path, *flags: str) -> str:
    """`python -m flows.ops.launch <flags> <the reference's parameters>`; its output."""
    params = env.params(cache_root)
    args = [f"--{name.replace('_', '-')}={value}" for name, value in params.items()]
    done = subprocess.run(
        [sys.executable, "-m", "flows.ops.launch", *flags, *args],
        env=_process_env(**cluster.client_env()),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}\n{cluster.tail()}"
    return done.stdout


def summary_process(artifacts: dict) -> tuple[str, str, int]:
    """(process, CUDA_VISIBLE_DEVICES, teachers loaded) from a run's summary artifact."""
    line = next(
        s for s in artifacts["extract-summary"].data.splitlines() if s.startswith("- process: ")
    )
    process, gpus, loads = line.removeprefix("- process: ").split(", ")
    return (
        process,
        gpus.removeprefix("CUDA_VISIBLE_DEVICES="),
        int(loads.removeprefix("teachers it loaded: ")),
    )


def test_two_runs_on_two_workers_commit_each_shard_once_and_load_the_teacher_once(
    cluster: Cluster, flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    cache_root = tmp_path / "cache"
    output = launch(
        cluster, flow_env, cache_root, "--runs=2", "--wait", f"--timeout={RUN_TIMEOUT_S}"
    )
    assert output.count(": Completed") == 2, output

    records = assert_same_cache(only_entry(cache_root, reference), reference)
    recorded = flow_runs_for(cluster.api, str(cache_root))
    assert len(recorded) == 2
    computed, gpus, processes = [], set(), set()
    for run, artifacts in recorded:
        assert run.state is not None and run.state.is_completed(), run.state
        assert run.deployment_id is not None, "started from the deployment, by a worker"
        process, visible, loads = summary_process(artifacts)
        rows = table_rows(artifacts["extract-shards"]) if "extract-shards" in artifacts else []
        mine = [row for row in rows if "rows" in row]
        computed.append({row["shard"] for row in mine})
        # One process per run computed all of the run's shards with one teacher, loaded once.
        assert {row["process"] for row in mine} <= {process}
        assert {row["teacher_loads"] for row in mine} <= {1} and loads == (1 if mine else 0)
        assert {row["gpus"] for row in mine} <= {visible}
        gpus.add(visible)
        processes.add(process)
    assert gpus == {"0", "1"}, "each worker's run sees only the GPU given to that worker"
    assert len(processes) == 2
    assert not computed[0] & computed[1], "no shard computed by both runs"
    assert computed[0] | computed[1] == set(reference.shard_names)
    assert max(len(c) for c in computed) >= 2, "a teacher served several shards"
    run_pids = {int(p.rsplit("-", 1)[1]) for p in processes}
    assert {writer_pid(r) for r in records.values()} <= run_pids
    assert not run_pids & {cluster.server_pid, *cluster.workers.values()}, (
        "flow runs are processes of their own, started by the workers"
    )


def _status(api: str, path: str, auth: str | None) -> int:
    request = urllib.request.Request(f"{api}{path}", data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    if auth is not None:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_client_without_the_auth_string_is_refused(cluster: Cluster) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import PrefectHTTPStatusError

    assert _status(cluster.api, "/deployments/filter", None) == 401
    assert _status(cluster.api, "/deployments/filter", "not-the-string") == 401
    assert _status(cluster.api, "/deployments/filter", cluster.auth) == 200
    with urllib.request.urlopen(f"{cluster.api}/health", timeout=10) as response:
        assert response.status == 200  # only the health probe is open

    with SyncPrefectClient(cluster.api) as client, pytest.raises(PrefectHTTPStatusError) as err:
        client.read_deployments()
    assert err.value.response.status_code == 401
    with SyncPrefectClient(cluster.api, auth_string=cluster.auth) as client:
        names = {d.name for d in client.read_deployments()}
    assert {"extract", "train", "evaluate"} <= names, "flows.ops.deploy registered every flow"


def test_a_worker_killed_mid_shard_leaves_its_shard_to_the_other(
    cluster: Cluster, flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cache_root = tmp_path / "cache"
    entry = cache_root / reference.key
    output = launch(cluster, flow_env, cache_root, "--runs=2")
    run_ids = [line.rsplit(" ", 1)[1] for line in output.splitlines() if line.startswith("started")]
    assert len(run_ids) == 2, output

    # Wait until a flow run is computing a shard after another was committed, freeze it there.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    victim = held = None
    while victim is None:
        assert time.monotonic() < deadline, f"no run got mid-shard:\n{cluster.tail()}"
        if _mid_shard(entry):
            for shard in sorted(_names(entry, "claims") - _names(entry, "commits")):
                claim = entry / "claims" / f"{shard}.json"
                with contextlib.suppress(OSError, ValueError):
                    pid = read_json(claim)["pid"]
                    _stop(pid)  # stopped, it cannot commit: check again that it holds the shard
                    if shard not in _names(entry, "commits") and read_json(claim)["pid"] == pid:
                        victim, held = pid, shard
                        break
                    os.killpg(pid, signal.SIGCONT)
        time.sleep(0.02)
    worker = psutil.Process(victim).ppid()
    assert worker in cluster.workers.values(), "the shard's writer is a worker's flow run"
    before = commit_records(entry)

    # The worker's machine goes down: the worker and its flow run die at once.
    os.killpg(worker, signal.SIGKILL)
    os.killpg(victim, signal.SIGKILL)
    with (  # the other run finishes the work
        temporary_settings({PREFECT_API_URL: cluster.api}),
        get_client(sync_client=True) as client,
    ):
        while not any(
            (state := client.read_flow_run(i).state) is not None and state.is_completed()
            for i in run_ids
        ):
            assert time.monotonic() < deadline, f"the other run did not finish:\n{cluster.tail()}"
            time.sleep(1.0)

    records = assert_same_cache(entry, reference)
    assert writer_pid(records[held]) != victim, "the killed run's shard was taken over"
    for name, record in before.items():
        assert records[name] == record, f"{name} was committed before the kill: kept as is"
    assert not list(entry.glob("claims/*.json")), "the dead claim was taken over and released"
    assert not psutil.pid_exists(victim), "the orphaned flow run was reaped by the cluster"


def test_ctrl_c_stops_workers_flow_runs_and_server(cluster: Cluster) -> None:
    started = [cluster.server_pid, *cluster.workers.values()]
    flow_runs = [
        child.pid
        for pid in started
        if psutil.pid_exists(pid)
        for child in psutil.Process(pid).children(recursive=True)
    ]
    os.kill(cluster.process.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
    try:
        code = cluster.process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the cluster did not stop on SIGINT:\n{cluster.tail()}")
    assert code == 0, cluster.tail()
    assert "cluster stopped" in cluster.tail()
    alive = [pid for pid in started + flow_runs if psutil.pid_exists(pid)]
    assert not alive, f"left running after Ctrl-C: {alive}"
    port = int(cluster.api.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a new server would
        sock.bind(("127.0.0.1", port))  # no one listens on the server's port any more


def test_make_ui_serves_loopback_only(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.ops.serve import main as serve

    with pytest.raises(SystemExit) as exit_info:
        serve(["--host", "0.0.0.0"])
    assert exit_info.value.code == 2
    assert "make cluster HOST=0.0.0.0" in capsys.readouterr().err
