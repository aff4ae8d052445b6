"""The extraction flow's reliability, end to end: `python -m flows.extract` runs as a separate
process against a real Prefect server on 127.0.0.1, on a tiny sample dataset and the tiny
teacher (CPU, float32, greedy decoding, so maps are deterministic), and every cache it leaves is
compared with one uninterrupted reference run, read back with plain `zarr` and `json`.

- the reference run is recorded on the Prefect server: state and artifacts, read by its client;
- a run killed with SIGKILL mid-shard, then rerun, ends with the reference cache;
- two runs started together on one cache root compute and commit each shard once;
- a run moves past a shard another live run holds, and takes it over when that run dies;
- corrupt images become invalid rows with their reason and the run goes on;
- a run with the cache on S3 (moto's S3 server on 127.0.0.1) stores the reference arrays;
- another prompt gets another entry, and a manifest that does not match is never reused;
- the same flow on a Dask cluster of two worker processes writes the reference cache.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import psutil
import pytest
import teacher_fixtures
import webdataset as wds
import zarr
from PIL import Image

from pipeline.cache import CacheMismatchError, ShardNotCommittedError, open_entry
from pipeline.cache.verify import verify_entry
from pipeline.datasets.generated import write_sample_dataset
from pipeline.shards.reader import iter_shard
from pipeline.shards.records import read_index

pytestmark = pytest.mark.slow
tiny_dir = teacher_fixtures.tiny_dir  # session fixture: the tiny LLaVA, built once

ARRAYS = ("c_vlm", "c_fore", "c_back", "valid", "key", "reason", "answer", "fg_correct")
SPLIT = "train"
SHARD_SIZE = 3  # 20 train images -> 7 shards, the last one short (2 rows)
RUN_TIMEOUT_S = 300
# Manifest fields that record history (when, by whom), not content.
HISTORY = ("created", "created_by")


@dataclass(frozen=True)
class FlowEnv:
    raw: Path  # the sample dataset in TinyImageNet's layout
    shards_root: Path  # shards every run shares (written by the reference run)
    teacher: Path  # the tiny LLaVA's directory
    api: str  # the Prefect server's API URL
    prefect_home: Path  # that server's Prefect home (its database)
    logs: Path

    def params(self, cache_root: str | Path, **overrides: Any) -> dict[str, Any]:
        """ExtractParams fields of a run; the CLI flags and in-process calls use the same."""
        return {
            "dataset": "sample",
            "split": SPLIT,
            "root": str(self.raw),
            "shards_root": str(self.shards_root),
            "shard_size": SHARD_SIZE,
            "teacher": str(self.teacher),
            "quant": "none",
            "dtype": "float32",
            "cache_root": str(cache_root),
            "previews": 0,
            **overrides,
        }


@dataclass(frozen=True)
class Reference:
    cache_root: Path
    entry: Path
    key: str
    shard_names: list[str]
    arrays: dict[str, np.ndarray]
    manifest: dict[str, Any]
    output: str  # what the run printed on its console


@dataclass
class FlowProcess:
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def finish(self, timeout_s: float = RUN_TIMEOUT_S) -> str:
        """Wait for the run; its output, after asserting that it succeeded."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"extraction did not finish within {timeout_s} s:\n{self.tail()}")
        assert code == 0, f"extraction exited with {code}:\n{self.tail()}"
        return self.log.read_text(errors="replace")


def start_flow(
    env: FlowEnv,
    params: dict[str, Any],
    *extra: str,
    extra_env: dict[str, str] | None = None,
    own_server: bool = False,
) -> FlowProcess:
    """`python -m flows.extract ...` in its own process group, reporting to the test's server;
    with `own_server`, as a user's command runs: no PREFECT_API_URL, so the run starts its own
    temporary server, on the test server's database (its runs show on the test server)."""
    args = [f"--{name.replace('_', '-')}={value}" for name, value in params.items()]
    log = env.logs / f"extract-{uuid.uuid4().hex[:8]}.log"
    process_env = {
        **os.environ,
        "PREFECT_API_URL": env.api,
        "OMP_NUM_THREADS": "1",  # two runs (or two Dask workers) share this machine's cores
        **(extra_env or {}),
    }
    if own_server:
        del process_env["PREFECT_API_URL"]
        process_env["PREFECT_HOME"] = str(env.prefect_home)
    for name in ("PREFECT_LOGGING_LEVEL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        process_env.pop(name, None)  # the project's own defaults, as `make extract` has them
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.extract", *args, *extra],
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = FlowProcess(process, log)
    _STARTED.append(run)
    return run


_STARTED: list[FlowProcess] = []


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test() -> Iterator[None]:
    """A failing assertion must not leave a stopped (SIGSTOP) or running extraction behind."""
    yield
    while _STARTED:
        run = _STARTED.pop()
        if run.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            run.process.wait()


# ---- reading caches back with plain zarr and json ------------------------------------------
def read_arrays(entry: str | Path, storage_options: dict[str, Any] | None = None) -> dict:
    group = zarr.open_group(f"{entry}/maps.zarr", mode="r", storage_options=storage_options)
    return {name: group[name][:] for name in ARRAYS}


def read_json(url: str | Path, storage_options: dict[str, Any] | None = None) -> Any:
    with fsspec.open(str(url), "rb", **(storage_options or {})) as handle:
        return json.load(handle)


def commit_records(
    entry: str | Path, storage_options: dict[str, Any] | None = None
) -> dict[str, dict]:
    """Every file under commits/ (shard name -> record), whatever its name."""
    fs, path = fsspec.core.url_to_fs(f"{entry}/commits", **(storage_options or {}))
    fs.invalidate_cache()
    records = {}
    for name in sorted(fs.ls(path, detail=False)):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        records[base.removesuffix(".json")] = json.loads(fs.cat_file(name))
    return records


def writer_pid(record: dict) -> int:
    """Writer ids are `<host>-<pid>-<random>`."""
    return int(record["writer"].rsplit("-", 2)[1])


def only_entry(cache_root: Path, reference: Reference) -> Path:
    entries = sorted(p.name for p in cache_root.iterdir())
    assert entries == [reference.key], f"expected one entry {reference.key}, found {entries}"
    return cache_root / reference.key


def assert_same_cache(
    entry: str | Path, reference: Reference, storage_options: dict[str, Any] | None = None
) -> dict[str, dict]:
    """The entry holds exactly the reference run's cache; returns its commit records."""
    arrays = read_arrays(entry, storage_options)
    for name in ARRAYS:
        assert arrays[name].dtype == reference.arrays[name].dtype, name
        np.testing.assert_array_equal(arrays[name], reference.arrays[name], err_msg=name)
    manifest = read_json(f"{entry}/manifest.json", storage_options)
    assert {k: v for k, v in manifest.items() if k not in HISTORY} == {
        k: v for k, v in reference.manifest.items() if k not in HISTORY
    }
    records = commit_records(entry, storage_options)
    assert sorted(records) == reference.shard_names, "one commit record per shard, no other file"
    for shard in manifest["shards"]:
        record = records[shard["name"]]
        assert (record["row_start"], record["count"]) == (shard["row_offset"], shard["count"])
        assert record["cache_key"] == reference.key
    reader = open_entry(str(entry), storage_options)
    assert reader.pending_shards() == []
    assert verify_entry(reader) == []
    return records


# ---- Prefect's record of runs ---------------------------------------------------------------
def flow_runs_for(api: str, cache_root: str) -> list[tuple[Any, dict[str, Any]]]:
    """The extract-maps runs with this cache root, each with its artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    found = []
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["extract-maps"]))
        )
        for run in runs:
            if run.parameters.get("params", {}).get("cache_root") != cache_root:
                continue
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            found.append((run, {a.key: a for a in artifacts if a.key}))
    return found


def run_logs(api: str, flow_run_id: Any) -> list[tuple[int, str]]:
    """(level, message) of every log line a flow run and its tasks sent to the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [(log.level, log.message) for log in logs]


def table_rows(artifact: Any) -> list[dict]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_env(
    tmp_path_factory, tiny_dir: Path, prefect_server: str, prefect_server_home: Path
) -> FlowEnv:
    root = tmp_path_factory.mktemp("extract-flow")
    raw = root / "raw"
    write_sample_dataset(raw, train_per_class=2, val_per_class=1)
    (root / "logs").mkdir()
    return FlowEnv(
        raw, root / "shards", tiny_dir, prefect_server, prefect_server_home, root / "logs"
    )


@pytest.fixture(scope="module")
def reference(flow_env: FlowEnv) -> Reference:
    """One uninterrupted run (threads, one process): what every other run must reproduce."""
    cache_root = flow_env.logs.parent / "reference-cache"
    params = flow_env.params(cache_root, previews=2)
    output = start_flow(flow_env, params).finish()
    entry = next(cache_root.iterdir())
    index = read_index(flow_env.shards_root / "sample" / SPLIT)
    assert f"map cache entry: {entry}" in output
    arrays = read_arrays(entry)
    # The reference itself is a full, sane cache (else equal-to-reference would prove little).
    assert len(index.shards) == 7 and index.num_samples == 20
    assert arrays["key"].tolist() == [k for s in index.shards for k in s.keys]
    assert arrays["valid"].all() and not any(arrays["reason"])
    sums = arrays["c_vlm"].astype(np.float32).sum(axis=(1, 2))
    np.testing.assert_allclose(sums, 1.0, atol=2e-2)
    assert all(answer.strip() for answer in arrays["answer"])
    return Reference(
        cache_root=cache_root,
        entry=entry,
        key=entry.name,
        shard_names=[s.name for s in index.shards],
        arrays=arrays,
        manifest=read_json(entry / "manifest.json"),
        output=output,
    )


# ---- tests ----------------------------------------------------------------------------------
def test_reference_run_is_recorded_on_the_prefect_server(
    flow_env: FlowEnv, reference: Reference
) -> None:
    runs = flow_runs_for(flow_env.api, str(reference.cache_root))
    assert len(runs) == 1, f"expected one extract-maps run for the reference, got {len(runs)}"
    run, artifacts = runs[0]
    assert run.state is not None and run.state.is_completed(), run.state

    summary = artifacts["extract-summary"]
    assert summary.type == "markdown"
    assert f"Map cache entry `{reference.key}`" in summary.data
    assert str(reference.entry) in summary.data
    assert "shards committed: 7/7" in summary.data
    assert "rows written: 20 (0 invalid)" in summary.data
    previews = [line for line in summary.data.splitlines() if line.endswith(".png`")]
    assert len(previews) == 2 == len(list((reference.entry / "previews").glob("*.png")))
    # The pictures themselves are in the artifact (the UI cannot read the entry's folder).
    pictures = re.findall(
        r"!\[([^\]]+)\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", summary.data
    )
    assert [name for name, _ in pictures] == [p.split("/")[-1][:-5] for p in previews]
    for name, data in pictures:
        shown = Image.open(io.BytesIO(base64.b64decode(data)))
        assert shown.format == "JPEG"
        original = Image.open(reference.entry / "previews" / f"{name}.png").convert("RGB")
        expected = original.resize(shown.size, Image.Resampling.BOX)
        assert shown.width >= 600 and abs(shown.height / shown.width - 0.25) < 0.01
        difference = np.abs(np.asarray(shown, np.int16) - np.asarray(expected, np.int16))
        assert difference.mean() < 6, f"{name}: the thumbnail is not that preview"

    # INFO lines reach the run's Logs tab; the console stays quiet (warnings only).
    logs = run_logs(flow_env.api, run.id)
    info = [message for level, message in logs if level == logging.INFO]
    assert any(m.startswith("shards ") and "20 samples in 7 shard(s)" in m for m in info), logs
    computed = [
        m for m in info if re.fullmatch(r"shard-\d+\.tar: \d rows in [\d.]+ s \(0 invalid\)", m)
    ]
    assert len(computed) == 7, info
    assert "rows in" not in reference.output and "INFO" not in reference.output

    # Progress over the run's 20 images: a console bar with its rate, and the UI's artifact.
    assert re.search(r"extract 7 shard\(s\): +100%.*20/20 \[[^\]]*img/s\]", reference.output)
    progress = artifacts["extract-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0

    shards = artifacts["extract-shards"]
    assert shards.type == "table"
    rows = table_rows(shards)
    assert sorted(row["shard"] for row in rows) == reference.shard_names
    assert {row["status"] for row in rows} == {"written"}
    assert sum(row["rows"] for row in rows) == 20
    assert str(reference.entry.parent) in json.dumps(run.parameters)  # the run says where

    # The run ends with the map-quality report: an artifact, and report.json/png in the entry.
    quality = artifacts["map-quality"]
    assert quality.type == "markdown" and f"Map quality of `{reference.key}`" in quality.data
    report = json.loads((reference.entry / "report.json").read_text())
    assert report["cache_key"] == reference.key and report["groups"][0]["rows"] == 20
    assert (reference.entry / "report.png").read_bytes().startswith(b"\x89PNG")


def _stop(pid: int) -> None:
    """SIGSTOP a process group and wait until every thread of its leader has stopped."""
    os.killpg(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in "tT" for state in states):
            return
        time.sleep(0.001)
    raise TimeoutError(f"process {pid} did not stop")


def _names(entry: Path, folder: str) -> set[str]:
    return {p.name.removesuffix(".json") for p in entry.glob(f"{folder}/*.json")}


def _mid_shard(entry: Path) -> bool:
    """At least one shard committed, and a claim held on one that is not."""
    return bool(_names(entry, "commits")) and bool(
        _names(entry, "claims") - _names(entry, "commits")
    )


def _stop_mid_shard(run: FlowProcess, entry: Path) -> None:
    """SIGSTOP `run` once a shard is committed and the next one is claimed (its computation
    under way); the state is checked again with the process stopped, so it holds for sure."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        assert run.process.poll() is None, f"run ended before it was stopped:\n{run.tail()}"
        assert time.monotonic() < deadline, "no shard committed in time"
        if _mid_shard(entry):
            _stop(run.pid)
            if _mid_shard(entry):
                return
            os.killpg(run.pid, signal.SIGCONT)
        time.sleep(0.01)


def test_sigkill_mid_run_then_rerun_gives_the_reference_cache(
    flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    cache_root = tmp_path / "cache"
    entry = cache_root / reference.key
    # As a user's command runs (no PREFECT_API_URL): the run starts its own temporary server.
    killed = start_flow(flow_env, flow_env.params(cache_root), own_server=True)
    _stop_mid_shard(killed, entry)
    helpers = psutil.Process(killed.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(p.cmdline()) for p in helpers), "its temporary server"
    os.kill(killed.pid, signal.SIGKILL)  # the run's process alone, as the OOM killer does
    killed.process.wait()  # reaped: its pid is gone, so its claim is dead
    os.killpg(killed.pid, signal.SIGCONT)  # the server was stopped with its group: let it go
    _, alive = psutil.wait_procs(helpers, timeout=30)
    assert not alive, f"left behind by the killed run: {[p.cmdline() for p in alive]}"

    before = commit_records(entry)
    assert 1 <= len(before) < len(reference.shard_names), "the kill must leave the entry partial"
    assert {writer_pid(r) for r in before.values()} == {killed.pid}
    stale = {p.name.removesuffix(".json"): read_json(p) for p in entry.glob("claims/*.json")}
    assert len(stale) == 1 and not set(stale) & set(before), "one shard was under way"
    assert all(claim["pid"] == killed.pid for claim in stale.values())
    partial = open_entry(str(entry))
    assert partial.pending_shards() == [n for n in reference.shard_names if n not in before]
    with pytest.raises(ShardNotCommittedError):
        partial.read_shard(next(iter(stale)))  # the interrupted shard is not readable

    # The rerun takes the dead writer's claim over at once (its lease has 2 h left) and computes
    # only what was not committed.
    rerun = start_flow(flow_env, flow_env.params(cache_root), own_server=True)
    rerun.finish(timeout_s=180)
    records = assert_same_cache(entry, reference)
    for name, record in records.items():
        if name in before:
            assert record == before[name], f"{name} was committed before the kill: kept as is"
        else:
            assert writer_pid(record) == rerun.pid, f"{name} is the rerun's work"
    assert not list(entry.glob("claims/*.json")), "claims are released, the dead one included"

    # In Prefect, the killed run is Crashed (the rerun found its process gone), not Running.
    runs = {
        int(run.labels["lfi.pid"]): run for run, _ in flow_runs_for(flow_env.api, str(cache_root))
    }
    assert sorted(runs) == sorted([killed.pid, rerun.pid])
    assert runs[killed.pid].state.is_crashed(), runs[killed.pid].state
    assert "ended without reporting" in runs[killed.pid].state.message
    assert runs[rerun.pid].state.is_completed(), runs[rerun.pid].state

    verify = subprocess.run(
        [sys.executable, "-m", "pipeline", "cache", "verify", str(entry)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "OK (7 committed shard(s) verified, 0 pending)" in verify.stdout


def test_two_runs_started_together_commit_each_shard_once(
    flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    cache_root = tmp_path / "cache"
    runs = [start_flow(flow_env, flow_env.params(cache_root)) for _ in range(2)]
    for run in runs:
        run.finish()
    entry = only_entry(cache_root, reference)
    records = assert_same_cache(entry, reference)
    assert {writer_pid(r) for r in records.values()} <= {run.pid for run in runs}
    assert not list(entry.glob("claims/*.json"))
    assert not list(entry.rglob("*.partial")), "no temporary file left behind"

    # What each run did, as Prefect recorded it: every shard computed and written by exactly
    # one of the two; the other found it claimed or committed and skipped it (or never saw it
    # pending). How the shards split depends on timing; the next test forces a split.
    recorded = flow_runs_for(flow_env.api, str(cache_root))
    assert len(recorded) == 2
    computed, written = [], []
    for run, artifacts in recorded:
        assert run.state is not None and run.state.is_completed(), run.state
        rows = table_rows(artifacts["extract-shards"]) if "extract-shards" in artifacts else []
        computed.append({r["shard"] for r in rows if "rows" in r})
        written.append({r["shard"] for r in rows if r["status"] == "written"})
    assert not computed[0] & computed[1], "no shard computed by both runs"
    assert written[0] | written[1] == set(reference.shard_names)
    assert written[0] == computed[0] and written[1] == computed[1]


def test_a_run_moves_past_a_shard_a_live_writer_holds_and_takes_it_when_that_dies(
    flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    # Two extractors split the work (docs/scale-out.md: a worker per GPU on one entry): a shard that
    # another live writer is computing is left for last, and its claim is taken over as soon as
    # that writer dies, by the run already under way.
    cache_root = tmp_path / "cache"
    entry = cache_root / reference.key
    first = start_flow(flow_env, flow_env.params(cache_root))
    _stop_mid_shard(first, entry)  # alive, holding one shard's claim, computing nothing
    done_by_first = _names(entry, "commits")
    (held,) = _names(entry, "claims") - done_by_first
    second = start_flow(flow_env, flow_env.params(cache_root))

    deadline = time.monotonic() + 90
    while _names(entry, "commits") | {held} != set(reference.shard_names):
        assert second.process.poll() is None, f"second run ended early:\n{second.tail()}"
        assert time.monotonic() < deadline, "the second run waited instead of moving on"
        time.sleep(0.05)
    assert held not in _names(entry, "commits") and second.process.poll() is None
    os.killpg(first.pid, signal.SIGKILL)
    first.process.wait()
    second.finish(timeout_s=120)

    records = assert_same_cache(entry, reference)
    for name, record in records.items():
        expected = first.pid if name in done_by_first else second.pid
        assert writer_pid(record) == expected, name
    assert not list(entry.glob("claims/*.json"))


def test_a_rerun_with_nothing_to_do_answers_without_prefect(
    flow_env: FlowEnv, reference: Reference
) -> None:
    output = start_flow(
        flow_env, flow_env.params(reference.cache_root, previews=2), own_server=True
    ).finish(timeout_s=120)
    assert "nothing to do" in output
    assert "Prefect" not in output, "no temporary server was started"
    assert f"map cache entry: {reference.entry}\n" in output
    assert f"preview overlays: {reference.entry}/previews\n" in output

    def printed(text: str) -> dict:
        return json.loads(text[text.index("{\n") : text.index("\n}") + 2])

    assert printed(output) == printed(reference.output)
    assert len(flow_runs_for(flow_env.api, str(reference.cache_root))) == 1, "no new run"


def test_a_rerun_with_nothing_to_do_imports_neither_prefect_nor_torch(
    flow_env: FlowEnv, reference: Reference
) -> None:
    """What keeps that rerun at a few seconds: the cache key comes from the checkpoint's JSON
    and tokenizer files (teacher.weights.checkpoint), and nothing on the way imports Prefect or torch
    (seconds each), transformers or torchvision. Python's own import log
    (PYTHONPROFILEIMPORTTIME) says which modules the process imported."""
    output = start_flow(
        flow_env,
        flow_env.params(reference.cache_root, previews=2),
        extra_env={"PYTHONPROFILEIMPORTTIME": "1"},
        own_server=True,
    ).finish(timeout_s=120)
    assert "nothing to do" in output
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in output.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "pipeline.cache" in imported and "teacher.spec" in imported  # the log is read right
    assert not {"prefect", "torch", "transformers", "torchvision", "webdataset"} & imported


def test_sigterm_marks_the_run_crashed_and_leaves_no_process(
    flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    cache_root = tmp_path / "cache"
    entry = cache_root / reference.key
    run = start_flow(flow_env, flow_env.params(cache_root), own_server=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not _mid_shard(entry):
        assert run.process.poll() is None, f"run ended before the signal:\n{run.tail()}"
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.05)
    helpers = psutil.Process(run.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(p.cmdline()) for p in helpers), "its temporary server"

    run.process.send_signal(signal.SIGTERM)  # the run's process alone, as `timeout` does
    assert run.process.wait(timeout=120) == 128 + signal.SIGTERM, run.tail()
    _, alive = psutil.wait_procs(helpers, timeout=15)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    assert "Traceback" not in run.tail()

    ((recorded, _),) = flow_runs_for(flow_env.api, str(cache_root))
    assert recorded.state.is_crashed(), recorded.state
    assert len(_names(entry, "commits")) < len(reference.shard_names), "stopped mid-way"


def _rewrite_shard(shard_dir: Path, shard_name: str, broken: dict[str, bytes]) -> None:
    """Rewrite one shard with some samples' image bytes replaced, and re-sign index.json."""
    path = shard_dir / shard_name
    samples = list(iter_shard(path))
    with wds.TarWriter(str(path), mtime=0.0, encoder=False) as writer:
        for sample in samples:
            writer.write(
                {
                    "__key__": sample.key,
                    sample.image_ext: broken.get(sample.key, sample.image_bytes),
                    "json": sample.record.model_dump_json().encode(),
                }
            )
    index = read_index(shard_dir)
    for shard in index.shards:
        if shard.name == shard_name:
            shard.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    # Same source files, so the flow's shard step finds these shards current and keeps them.
    index.fingerprint = index.compute_fingerprint()
    (shard_dir / "index.json").write_text(json.dumps(index.model_dump(), indent=1))


def test_corrupt_images_become_invalid_rows_and_the_run_goes_on(
    flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    shards_root = tmp_path / "shards"
    shard_dir = shards_root / "sample" / SPLIT
    shutil.copytree(flow_env.shards_root / "sample" / SPLIT, shard_dir)
    index = read_index(shard_dir)
    garbage_key = index.shards[1].keys[1]
    truncated_key = index.shards[4].keys[0]
    truncated = next(s for s in iter_shard(shard_dir / index.shards[4].name))
    _rewrite_shard(shard_dir, index.shards[1].name, {garbage_key: b"not an image " * 40})
    _rewrite_shard(shard_dir, index.shards[4].name, {truncated_key: truncated.image_bytes[:200]})

    cache_root = tmp_path / "cache"
    start_flow(flow_env, flow_env.params(cache_root, shards_root=str(shards_root))).finish()
    (entry,) = cache_root.iterdir()
    assert entry.name != reference.key, "other shard bytes, other fingerprint, other entry"
    arrays = read_arrays(entry)
    assert arrays["key"].tolist() == reference.arrays["key"].tolist()

    bad_rows = [arrays["key"].tolist().index(k) for k in (garbage_key, truncated_key)]
    for row in bad_rows:
        reason = arrays["reason"][row]
        assert not arrays["valid"][row] and reason.startswith("corrupt image (jpg in "), reason
        assert not arrays["c_vlm"][row].any() and arrays["fg_correct"][row] == -1
    good = np.ones(len(arrays["key"]), dtype=bool)
    good[bad_rows] = False
    assert arrays["valid"][good].all() and not any(arrays["reason"][good])
    # Shards without a corrupt image hold exactly the reference rows; the good rows beside a
    # corrupt one went through the teacher in a smaller batch, so they match closely.
    untouched = np.ones_like(good)
    for i in (1, 4):
        start = index.shard_offsets()[i]
        untouched[start : start + index.shards[i].count] = False
    for name in ARRAYS:
        np.testing.assert_array_equal(arrays[name][untouched], reference.arrays[name][untouched])
    for name in ("c_vlm", "c_fore", "c_back"):
        np.testing.assert_allclose(
            arrays[name][good].astype(np.float32),
            reference.arrays[name][good].astype(np.float32),
            atol=1e-3,
            err_msg=name,
        )

    records = commit_records(entry)
    assert sorted(records) == reference.shard_names
    for name in (index.shards[1].name, index.shards[4].name):
        assert records[name]["invalid"] == 1
        (reason,) = records[name]["invalid_by_reason"]
        assert reason.startswith(f"corrupt image (jpg in {name})")
    assert verify_entry(open_entry(str(entry))) == []


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, Any]]:
    """moto's S3 API on 127.0.0.1 with one bucket; yields fsspec options that reach it."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="maps")
    yield {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    server.stop()


def test_cache_on_s3_holds_the_reference_arrays(
    flow_env: FlowEnv, reference: Reference, s3_server: dict[str, Any]
) -> None:
    root = f"s3://maps/{uuid.uuid4().hex[:8]}/cache"
    s3_env = {  # the standard environment, as a user's shell would set it
        "AWS_ENDPOINT_URL": s3_server["client_kwargs"]["endpoint_url"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    output = start_flow(flow_env, flow_env.params(root, previews=1), extra_env=s3_env).finish()
    entry = f"{root}/{reference.key}"
    assert f"map cache entry: {entry}\n" in output
    assert f"preview overlays: {entry}/previews\n" in output
    assert_same_cache(entry, reference, s3_server)
    fs, path = fsspec.core.url_to_fs(entry, **s3_server)
    assert fs.ls(f"{path}/previews", detail=False), "preview overlays stored next to the maps"
    assert not fs.exists(f"{path}/claims") or not fs.ls(f"{path}/claims", detail=False)


def test_another_spec_gets_another_entry_and_a_foreign_manifest_is_refused(
    flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    from flows.extract_entry import create_or_open_entry as _open_entry  # the flow's own way
    from flows.extract_params import ExtractParams

    cache_root = tmp_path / "cache"
    shutil.copytree(reference.entry, cache_root / reference.key)
    same = _open_entry(ExtractParams(**flow_env.params(cache_root)))
    assert same.key == reference.key and same.pending_shards() == []

    others = {}
    changes = (
        {"prompt": "prompt2"},
        {"answer_mode": "generate"},
        {"quant": "4bit", "dtype": "float16"},
    )
    for change in changes:
        other = _open_entry(ExtractParams(**flow_env.params(cache_root, **change)))
        assert other.key != reference.key, change
        assert other.pending_shards() == reference.shard_names, f"{change}: nothing reused"
        others.update({name: other for name in change})
    # A reader that asks the reference entry for another spec is told what differs.
    with pytest.raises(CacheMismatchError, match=r"another spec .*teacher\.prompt"):
        open_entry(str(reference.entry), expect=others["prompt"].spec)

    # An entry at the requested key whose manifest was made for other shards is never reused.
    manifest_path = cache_root / reference.key / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][2]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match=r"does not match the requested entry.*shards"):
        _open_entry(ExtractParams(**flow_env.params(cache_root)))


def test_dask_cluster_of_two_workers_writes_the_reference_cache(
    flow_env: FlowEnv, reference: Reference, tmp_path: Path
) -> None:
    cache_root = tmp_path / "cache"
    run = start_flow(flow_env, flow_env.params(cache_root), "--runner=dask", "--workers=2")
    run.finish()
    records = assert_same_cache(only_entry(cache_root, reference), reference)
    pids = {writer_pid(r) for r in records.values()}
    assert run.pid not in pids, "shards are computed in the Dask workers, not the flow process"
    assert len(pids) == 2, f"both worker processes wrote shards: {pids}"
