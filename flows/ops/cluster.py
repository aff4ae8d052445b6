"""`make cluster`: the scale-out recipe of docs/scale-out.md on one machine, in one command.

    python -m flows.ops.cluster --workers 2                 # GPUs 0 and 1, server on 127.0.0.1:4200
    python -m flows.ops.cluster --gpus 0,1,2,3 --host 0.0.0.0   # reachable by other machines

It starts, in this order: a Prefect server that refuses every API call without the auth string
(PREFECT_SERVER_API_AUTH_STRING), a process work pool, the deployments of `flows.ops.deploy`, and one
`prefect worker start --limit 1` per GPU with CUDA_VISIBLE_DEVICES set to that GPU, so each worker
runs one flow run at a time on its own GPU. Then it waits; Ctrl-C (or SIGTERM) stops the workers,
the flow runs they started and the server, and exits.

The auth string is PREFECT_SERVER_API_AUTH_STRING when set, else the content of `--auth-file`
(created with a random string, readable by its owner only, when missing). Clients and workers on
other machines pass it as PREFECT_API_AUTH_STRING.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import flows  # noqa: F401  (Prefect settings)
from flows.ops.server import DEFAULT_PORT, start_prefect_server, wait_until_healthy
from pipeline.paths import prefect_home

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@dataclass
class Member:
    """One process the cluster started (the leader of its own process session)."""

    name: str
    process: subprocess.Popen
    log: Path
    reported_exit: bool = field(default=False)


def auth_string(auth_file: Path) -> str:
    """The server's auth string: the environment's, else the file's (made when missing)."""
    if value := os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        return value
    if auth_file.is_file():
        value = auth_file.read_text().strip()
        if not value:
            raise ValueError(f"{auth_file} is empty: delete it to get a new auth string")
        return value
    auth_file.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    descriptor = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as sink:
        sink.write(value + "\n")
    return value


def client_url(host: str, port: int) -> str:
    """The API URL local clients use (a server bound to every interface is reached on loopback)."""
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{reach}:{port}/api"


def create_process_pool(pool: str) -> None:
    """`prefect work-pool create <pool> --type process --overwrite`, without a CLI start-up."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name=pool, type="process", base_job_template=template), overwrite=True
        )


def start_worker(pool: str, gpu: str, logs: Path) -> Member:
    """`CUDA_VISIBLE_DEVICES=<gpu> prefect worker start --pool <pool> --limit 1`."""
    name = f"{pool}-gpu{gpu}"
    log = logs / f"worker-gpu{gpu}.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
               "--type", "process", "--limit", "1", "--name", name]  # fmt: skip
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Member(name, process, log)


def _become_subreaper() -> None:
    """Flow runs a killed worker leaves behind become our children (reaped, and stopped at the
    end) instead of init's; a zombie would otherwise look alive to the cache's claim check."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_orphans(members: list[Member]) -> None:
    ours = {m.process.pid for m in members}
    for child in psutil.Process().children():
        if child.pid in ours:
            continue
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


def _signal_tree(pid: int, sig: int) -> None:
    """`sig` to the process group of `pid` and of every descendant (flow runs have their own)."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    groups = set()
    for process in tree:
        with contextlib.suppress(psutil.Error, OSError):
            groups.add(os.getpgid(process.pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def _stop_group(members: list[Member], grace_s: float) -> None:
    for member in members:
        _signal_tree(member.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for member in members:
        try:
            member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_tree(member.process.pid, signal.SIGKILL)
            member.process.wait()


def stop_members(members: list[Member], grace_s: float = 15.0) -> None:
    """Workers (with the flow runs they started) first, then the server: SIGTERM each whole
    process tree, SIGKILL what is left after `grace_s`; then orphaned flow runs; reap them all."""
    _stop_group([m for m in members if m.name != "server"], grace_s)
    for orphan in psutil.Process().children():  # flow runs of killed workers, reparented to us
        if all(orphan.pid != m.process.pid for m in members):
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(orphan.pid), signal.SIGKILL)
    _stop_group([m for m in members if m.name == "server"], grace_s)
    for child in psutil.Process().children():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ops.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="workers on GPUs 0..N-1")
    parser.add_argument("--gpus", help="comma-separated CUDA_VISIBLE_DEVICES, one worker each")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0: reachable by others")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--pool", default="gpus", help="the process work pool's name")
    parser.add_argument("--home", type=Path, default=prefect_home(),
                        help="the server's PREFECT_HOME (its database)")  # fmt: skip
    parser.add_argument("--auth-file", type=Path, default=prefect_home() / "api-auth")
    args = parser.parse_args(argv)
    gpus = args.gpus.split(",") if args.gpus else [str(i) for i in range(args.workers)]
    if not gpus or any(not g.strip() for g in gpus):
        parser.error(f"--gpus {args.gpus!r}: give one GPU index per worker, e.g. 0,1")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C must stop the cluster even when the shell that started us ignores SIGINT (a
    # background job of a script does, and Python then keeps ignoring it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _become_subreaper()
    secret = auth_string(args.auth_file)
    logs = args.home / "cluster-logs"
    logs.mkdir(parents=True, exist_ok=True)
    api = client_url(args.host, args.port)
    members: list[Member] = []
    try:
        with (logs / "server.log").open("w") as sink:
            server, _ = start_prefect_server(args.host, args.port, args.home, sink, secret)
        members.append(Member("server", server, logs / "server.log"))
        wait_until_healthy(api, server)
        # `make launch` finds the cluster here (PREFECT_API_URL), the way it finds the auth string.
        (args.home / "api-url").write_text(api + "\n")
        # Everything below (and every worker) is a client of that server: before prefect loads.
        os.environ.update({"PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": secret})
        create_process_pool(args.pool)
        from flows.ops.deploy import main as deploy

        deploy(["--pool", args.pool])
        workers = [start_worker(args.pool, gpu, logs) for gpu in gpus]
        members[:0] = workers  # stopped before the server they report to
        ready = {
            "api": api,
            "pool": args.pool,
            "server_pid": server.pid,
            "workers": {w.name: w.process.pid for w in workers},
            "logs": str(logs),
        }
        print(f"cluster ready: {json.dumps(ready)}", flush=True)
        print(
            f"Prefect UI: http://{args.host}:{args.port} (auth string in {args.auth_file})\n"
            f"clients:    export PREFECT_API_URL={api} "
            f'PREFECT_API_AUTH_STRING="$(cat {args.auth_file})"\n'
            "Ctrl-C stops the workers, their flow runs and the server.",
            flush=True,
        )
        while True:
            time.sleep(1.0)
            _reap_orphans(members)
            for member in members:
                code = member.process.poll()
                if code is not None and not member.reported_exit:
                    member.reported_exit = True
                    print(f"{member.name} exited with code {code} (log: {member.log})", flush=True)
                    if member.name == "server":
                        return 1
    except KeyboardInterrupt:
        print("stopping workers, flow runs and server ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        stop_members(members)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print("cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
