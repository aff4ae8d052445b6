"""The extraction flow: shards -> teacher -> map cache, one task per uncommitted shard.

The flow body is plain calls; the work is in `teacher.shard_job` and `pipeline.cache`. Tasks get
paths, keys and a JSON config, so any task runner (threads, a Dask cluster, remote workers) can
place them; each worker process loads its teacher once. The command line is flows/extract.py
(`python -m flows.extract`), which imports this module only when there is work to do.
"""

from __future__ import annotations

import os
import socket
import time

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

import flows  # noqa: F401  (Prefect settings)
from flows.extract_entry import create_or_open_entry
from flows.extract_params import ExtractParams
from flows.ops.orphans import record_process
from flows.preview_artifact import previews_markdown
from flows.progress import RunProgress, current_run_progress, registered
from flows.retries import retry_unless_user_error
from flows.runtime import (
    default_concurrency,
    device_pool,
    get_teacher,
    teacher_loads,
    visible_gpus,
)
from pipeline.cache import CacheEntry, open_entry
from pipeline.shards.build import ensure_shards
from pipeline.shards.integrity import check_shard_files
from pipeline.shards.records import read_index
from teacher.maps.numerics import check_non_finite, count_non_finite


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def prepare_shards(params: ExtractParams) -> str:
    """Write the shards if they are missing or stale; returns their directory."""
    outcome = ensure_shards(params.shards)
    get_run_logger().info(
        "shards %s: %d samples in %d shard(s), %s",
        outcome.out_dir,
        outcome.index.num_samples,
        len(outcome.index.shards),
        "up to date" if outcome.up_to_date else "written",
    )
    return str(outcome.out_dir)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error)
def open_cache_entry(params: ExtractParams) -> tuple[str, list[str]]:
    """Create or open the entry; returns its location and the shards still to compute, each
    checked against its sha256 in index.json first (once per file per run, before any teacher
    loads: a damaged shard is one line naming it and `make shards`, nothing gets committed)."""
    entry = create_or_open_entry(params)
    pending = entry.pending_shards()
    check_shard_files(params.shard_dir(), read_index(params.shard_dir()), pending)
    return entry.path, pending


@task(
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_user_error,
    task_run_name="extract {shard_name}",
)
def extract_shard(
    params: ExtractParams, entry_path: str, shard_name: str, wait: bool = True, poll_s: float = 2.0
) -> dict:
    """Compute and commit one shard of the entry at `entry_path`, unless another writer finished
    it. If another live writer holds it: wait for its commit (or for its claim to die), or with
    `wait=False` return at once with status "held elsewhere"."""
    logger = get_run_logger()
    with device_pool().acquire() as device:
        index = read_index(params.shard_dir())
        entry = open_entry(entry_path, index=index)  # the index lets write_shard check row keys
        while True:
            with entry.claim(shard_name) as mine:  # released on the way out, also on failure
                if mine:
                    result = _compute_shard(params, entry, shard_name, index.classes, device)
                    break
            if shard_name in entry.committed_shards():
                logger.info("%s: committed by another writer", shard_name)
                return {"shard": shard_name, "status": "committed elsewhere"}
            if not wait:
                return {"shard": shard_name, "status": "held elsewhere"}
            time.sleep(poll_s)  # another live writer holds it: wait for its commit or lease
    logger.info(
        "%s: %d rows in %.1f s (%d invalid)",
        shard_name,
        result["rows"],
        result["seconds"],
        result["invalid"],
    )
    return result


def _compute_shard(
    params: ExtractParams, entry: CacheEntry, shard_name: str, vocabulary: list[str], device: str
) -> dict:
    """The teacher's maps of one claimed shard, written into the entry."""
    from teacher.shard_job import extract_shard_maps

    started = time.perf_counter()
    teacher = get_teacher(params.teacher_config(), vocabulary, device)
    progress = current_run_progress()  # None in another process (Dask): the flow counts shards
    maps = extract_shard_maps(
        teacher,
        params.shard_dir() / shard_name,
        entry,
        None if progress is None else progress.advance,
    )
    written = entry.write_shard(shard_name, maps)
    return {
        "shard": shard_name,
        "status": "written" if written else "committed elsewhere",
        "rows": len(maps),
        "seconds": time.perf_counter() - started,
        "invalid": int((~maps.valid).sum()),
        "non_finite": count_non_finite(list(maps.reason)),
        # Which process did it, on which GPUs, and how many teachers that process has loaded so
        # far: a worker's flow run loads its teacher once for all the shards it computes.
        "process": f"{socket.gethostname()}-{os.getpid()}",
        "device": device,
        "gpus": visible_gpus(),
        "teacher_loads": teacher_loads(),
    }


@task
def publish_summary(
    params: ExtractParams, entry_path: str, results: list[dict], wall_s: float
) -> dict:
    """Summary artifact: where the entry is, what it holds, preview overlays, and the
    map-quality report (also written into the entry as report.json / report.png)."""
    from pipeline.cache.report import report_markdown, write_report
    from teacher.previews import save_previews

    entry = open_entry(entry_path)
    summary = entry.summary()
    written = [r for r in results if r.get("status") == "written"]
    rows_now = sum(r["rows"] for r in written)
    seconds = sum(r["seconds"] for r in written)
    non_finite = sum(r.get("non_finite", 0) for r in written)
    summary["rows_non_finite"] = non_finite
    summary["seconds_per_image"] = seconds / rows_now if rows_now else None
    summary["wall_seconds"] = wall_s
    summary["previews"] = save_previews(entry, params.shard_dir(), count=params.previews)
    report, summary["report"] = write_report(entry, params.shard_dir())
    create_markdown_artifact(
        report_markdown(report) + "\n\n" + "\n".join(f"- `{url}`" for url in summary["report"]),
        key="map-quality",
        description="map quality against the ground-truth boxes",
    )
    fg = summary["fg_accuracy"]
    lines = [
        f"# Map cache entry `{summary['cache_key']}`",
        f"- location: `{summary['path']}`",
        f"- shards committed: {summary['shards_committed']}/{summary['shards_total']}",
        f"- rows written: {summary['rows_written']} ({summary['rows_invalid']} invalid)",
        f"- non-finite rows (this run): {non_finite} of {rows_now}"
        f" (the run fails above {params.max_non_finite:.1%})",
        f"- foreground accuracy: {'n/a' if fg is None else f'{fg:.1%}'}",
        f"- process: {socket.gethostname()}-{os.getpid()}, CUDA_VISIBLE_DEVICES={visible_gpus()}, "
        f"teachers it loaded: {teacher_loads()}",
        "- time per image (this run): "
        + ("n/a (nothing computed)" if not rows_now else f"{seconds / rows_now:.3f} s"),
        "## Invalid rows by reason",
        *(f"- {reason}: {n}" for reason, n in summary["invalid_by_reason"].items()),
        "## Previews",
        *previews_markdown(summary["previews"], entry.storage_options),
    ]
    create_markdown_artifact(
        "\n".join(lines), key="extract-summary", description="map cache summary"
    )
    if results:
        create_table_artifact(results, key="extract-shards", description="per-shard results")
    check_non_finite(non_finite, rows_now, params.max_non_finite)  # after the summary exists
    return summary


def _extract_pass(
    params: ExtractParams,
    entry_path: str,
    shards: list[str],
    wait: bool,
    results: list[dict],
    progress: RunProgress,
    sizes: dict[str, int],
) -> list[str]:
    """One task per shard; finished shards go to `results`. Returns the shards another live
    writer held (only when `wait` is False: waiting tasks hold on until they can finish)."""
    held = []
    for future in as_completed(
        extract_shard.map(unmapped(params), unmapped(entry_path), shards, unmapped(wait))
    ):
        result = future.result()
        if result["status"] == "held elsewhere":
            held.append(result["shard"])
            continue
        results.append(result)
        # Tasks in this process advance it per batch; this covers tasks in other processes.
        progress.reach(sum(sizes[r["shard"]] for r in results))
    return held


@flow(
    name="extract-maps",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=1),
    on_running=[record_process],
)
def extract_flow(params: ExtractParams) -> dict:
    """Teacher maps for every uncommitted shard of a dataset split, into the map cache."""
    started = time.perf_counter()
    prepare_shards(params)
    entry_path, pending = open_cache_entry(params)
    counts = {s.name: len(s.keys) for s in read_index(params.shard_dir()).shards}
    sizes = {name: counts[name] for name in pending}
    progress = RunProgress(
        sum(sizes.values()), f"extract {len(pending)} shard(s)", "img", key="extract-progress"
    )
    results: list[dict] = []
    with registered(progress):
        # Shards another live writer is computing come last, so two extractors split the work.
        held = _extract_pass(params, entry_path, pending, False, results, progress, sizes)
        _extract_pass(params, entry_path, held, True, results, progress, sizes)
    progress.finish()
    return publish_summary(params, entry_path, results, time.perf_counter() - started)


def run_extract(params: ExtractParams, runner: str = "threads", workers: int = 2) -> dict:
    """Run the flow with the chosen task runner (threads in-process, or a local Dask cluster)."""
    concurrency = params.concurrency or default_concurrency()
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        task_runner = DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
        )
    else:
        task_runner = ThreadPoolTaskRunner(max_workers=concurrency)
    return extract_flow.with_options(task_runner=task_runner)(params)
