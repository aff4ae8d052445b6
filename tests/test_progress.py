"""RunProgress outside a Prefect run: counts from many threads add up, never pass the total and
never move back; metrics.jsonl's last epoch is what the train flow reports. (Inside real flow
runs, test_extract_flow and test_train_flow read the artifacts at 100 %.)"""

from __future__ import annotations

import json
import threading

from flows.progress import RunProgress, epochs_done


def test_counts_from_threads_add_up_and_stop_at_the_total() -> None:
    progress = RunProgress(100, "extract", "img", key="unused", console=False)
    assert progress.artifact is None  # no Prefect run here
    workers = [
        threading.Thread(target=lambda: [progress.advance(1) for _ in range(30)]) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert progress.done == 100 and progress.percent == 100.0  # 120 advances, capped


def test_reach_never_moves_back_and_finish_completes() -> None:
    progress = RunProgress(10, "extract", "img", key="unused", console=False)
    progress.reach(4)
    progress.reach(3)
    assert progress.done == 4 and progress.percent == 40.0
    progress.finish()
    assert progress.done == 10
    assert RunProgress(0, "empty", "img", key="unused", console=False).percent == 100.0


def test_epochs_done_reads_the_last_complete_line(tmp_path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    assert epochs_done(metrics) == 0
    metrics.write_text(json.dumps({"epoch": 1}) + "\n" + json.dumps({"epoch": 2}) + '\n{"epo')
    assert epochs_done(metrics) == 2  # a line still being written is skipped
