"""Multi-node training as docs/scale-out.md tells it, on one machine: `python -m flows.train
--config-only` writes the run's config, then two `torchrun --nnodes 2 --node-rank 0|1` with a
c10d rendezvous on 127.0.0.1 (gloo, one process each) run `student.run` on it, twice (the second
time with more epochs, so it resumes).

Each process runs the real `student.run` entry point through a small wrapper that records the
keys of the batches it trains on and the gradients the optimizer is about to apply (an optimizer
step pre-hook), so the test can check: disjoint shards, identical (all-reduced) gradients, one
checkpoint, and a resume that continues the run instead of restarting it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port
from test_train_flow import TINY_VIT, metrics, run_module, toy_data

pytestmark = pytest.mark.slow
__all__ = ["toy_data"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300

WRAPPER = textwrap.dedent(
    """
    import os, sys
    import torch
    import student.run as run

    out_dir = sys.argv[1]
    record = {"keys": [], "grads": []}

    class Recording:
        # The train loader as fit sees it, noting the keys of every batch it hands out.
        def __init__(self, loader):
            self.loader = loader
        def __len__(self):
            return len(self.loader)
        def __iter__(self):
            for batch in self.loader:
                record["keys"].append(list(batch["key"]))
                yield batch
        def __getattr__(self, name):
            return getattr(self.loader, name)

    real_fit = run.fit

    def fit(task, model, criterion, optimizer, scheduler, train_loader, *args, **kwargs):
        def keep(optimizer, args, kwargs):
            record["grads"].append({n: p.grad.detach().clone()
                                    for n, p in model.named_parameters() if p.grad is not None})
        optimizer.register_step_pre_hook(keep)
        return real_fit(task, model, criterion, optimizer, scheduler, Recording(train_loader),
                        *args, **kwargs)

    run.fit = fit
    code = run.main(sys.argv[2:])
    rank = os.environ["RANK"]
    torch.save(record, f"{out_dir}/rank{rank}-node{os.environ['GROUP_RANK']}.pt")
    sys.exit(code)
    """
)


def two_nodes(config: Path, out_dir: Path, wrapper: Path) -> None:
    """The two torchrun commands of docs/scale-out.md, one per 'node', against one c10d endpoint."""
    out_dir.mkdir(parents=True, exist_ok=True)
    endpoint = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node_rank}",
            "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            "--rdzv-id=multinode-test", str(wrapper), str(out_dir), "--config", str(config),
        ]  # fmt: skip
        log = (out_dir / f"node{node_rank}.log").open("w")
        nodes.append(
            (
                subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                ),
                log,
            )
        )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        for process, _ in nodes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process, log in nodes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
    for node_rank, (process, _) in enumerate(nodes):
        output = (out_dir / f"node{node_rank}.log").read_text(errors="replace")
        assert process.returncode == 0, f"node {node_rank} failed:\n{output[-4000:]}"


def records(out_dir: Path) -> list[dict]:
    """Each rank's record, by global rank."""
    found = sorted(out_dir.glob("rank*.pt"))
    assert [p.name.split("-")[0] for p in found] == ["rank0", "rank1"], found
    nodes = {p.name.split("-")[1] for p in found}
    assert nodes == {"node0.pt", "node1.pt"}, "one process on each node"
    return [torch.load(p, weights_only=True) for p in found]


def shard_of(key: str) -> str:
    return key.split("_")[0]  # toy keys are s<shard>_<i>


def test_two_torchrun_nodes_split_shards_share_gradients_and_resume(
    toy_data, prefect_server, tmp_path
) -> None:
    run_dir = toy_data["runs"] / "multinode"
    args = ["--dataset", "toy", "--shards-root", str(toy_data["shards"]),
            "--cache-root", str(toy_data["cache"]), "--runs-root", str(toy_data["runs"]),
            "--run", "multinode", "--val-split", "", *TINY_VIT]  # fmt: skip
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)

    written = run_module("flows.train", [*args, "--epochs", "1", "--config-only"], prefect_server)
    config = Path(written.stdout.strip().splitlines()[-1])
    assert config == run_dir / "config.json" and config.is_file()
    assert not (run_dir / "metrics.jsonl").exists(), "--config-only trains nothing"
    two_nodes(config, tmp_path / "first", wrapper)

    first = records(tmp_path / "first")
    shards = [{shard_of(k) for batch in r["keys"] for k in batch} for r in first]
    assert shards[0] and shards[1] and not shards[0] & shards[1], "disjoint shards"
    assert shards[0] | shards[1] == {"s00", "s01"}
    assert len(first[0]["grads"]) == len(first[1]["grads"]) == 2, "2 steps each, in lockstep"
    for step0, step1 in zip(first[0]["grads"], first[1]["grads"], strict=True):
        assert step0.keys() == step1.keys() and step0
        for name in step0:
            torch.testing.assert_close(step0[name], step1[name], rtol=0, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in first[0]["grads"][0].values())
    checkpoints = sorted(p.name for p in toy_data["runs"].rglob("checkpoint-*"))
    assert checkpoints == ["checkpoint-last.json", "checkpoint-last.safetensors"], checkpoints
    assert [row["epoch"] for row in metrics(run_dir)] == [1]
    weights = (run_dir / "checkpoint-last.safetensors").read_bytes()

    # The same command with more epochs continues the run on both nodes.
    cfg = json.loads(config.read_text())
    cfg["train"]["epochs"] = 2
    config.write_text(json.dumps(cfg))
    two_nodes(config, tmp_path / "second", wrapper)
    rows = metrics(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2], "resumed at epoch 2, not restarted"
    assert rows[1]["step"] == 2 * rows[0]["step"]
    second = records(tmp_path / "second")
    assert [len(r["grads"]) for r in second] == [2, 2], "only epoch 2 was trained"
    for name in second[0]["grads"][0]:
        torch.testing.assert_close(second[0]["grads"][0][name], second[1]["grads"][0][name])
    assert (run_dir / "checkpoint-last.safetensors").read_bytes() != weights
    assert sorted(p.name for p in toy_data["runs"].rglob("checkpoint-*")) == checkpoints
