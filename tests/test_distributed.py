"""torchrun with 2 CPU processes (gloo): shards split by rank, equal training steps, DDP grads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from loader_fixtures import write_toy_split

from student.distributed import (
    get_world_size,
    init_distributed,
    is_main_process,
    sum_over_ranks,
    wrap_ddp,
)

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from student.distributed import cleanup, init_distributed, is_main_process, sum_over_ranks, wrap_ddp
    from student.loader import LoaderConfig, build_loader

    shard_dir, small_dir, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    context = init_distributed()
    common = dict(img_size=16, patch_size=4, num_workers=1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    def loader(shards, split, batch_size, train):
        return build_loader(LoaderConfig(
            shard_dir=shards, split=split, batch_size=batch_size, train=train, **common
        ))
    evaluation = loader(shard_dir, "train", 4, False)
    eval_keys = [k for batch in evaluation for k in batch["key"]]
    training = loader(shard_dir, "train", 5, True)
    train_batches = list(training)

    torch.manual_seed(0)  # the same initial weights everywhere, as DDP also broadcasts them
    model = wrap_ddp(torch.nn.Linear(3, 1))
    features = train_batches[0]["image"].mean(dim=(2, 3))  # [B, 3], different on each rank
    model(features).pow(2).mean().backward()

    count = sum_over_ranks({"n": len(eval_keys)})["n"]

    # one shard for two ranks: evaluation leaves rank 1 idle, training refuses
    small = loader(small_dir, "val", 4, False)
    small_keys = [k for batch in small for k in batch["key"]]
    try:
        loader(small_dir, "val", 4, True)
        small_train_error = ""
    except ValueError as err:
        small_train_error = str(err)
    result = {
        "rank": context.rank,
        "world_size": context.world_size,
        "is_main": is_main_process(),
        "eval_keys": eval_keys,
        "eval_length": len(evaluation),
        "eval_batches": -(-len(eval_keys) // 4),
        "train_keys": [k for batch in train_batches for k in batch["key"]],
        "train_batches": len(train_batches),
        "train_length": len(training),
        "grad": model.module.weight.grad.flatten().tolist(),
        "all_reduced_count": int(count),
        "small_keys": small_keys,
        "small_length": len(small),
        "small_train_error": small_train_error,
    }
    with open(f"{out_dir}/rank{context.rank}.json", "w") as sink:
        json.dump(result, sink)
    cleanup()
    """
)


def shard_of(key: str) -> str:
    return key.split("_")[0]  # toy keys are s<shard>_<i>


@pytest.mark.slow
def test_torchrun_two_cpu_processes_split_shards_and_step_together(tmp_path):
    # 5 shards of 6: the ranks get 3 and 2 shards (18 and 12 samples), so one of them must
    # repeat its shards to give the same 3 training batches of 5 as the other.
    toy = write_toy_split(tmp_path / "shards", shards=5, per_shard=6)
    small = write_toy_split(tmp_path / "shards", shards=1, per_shard=6, split="val", key_prefix="v")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(script), str(toy.split_dir), str(small.split_dir), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["is_main"] for r in ranks] == [True, False]
    # evaluation: disjoint shards whose union is every shard; every key exactly once
    eval_shards = [{shard_of(k) for k in r["eval_keys"]} for r in ranks]
    assert not eval_shards[0] & eval_shards[1]
    assert eval_shards[0] | eval_shards[1] == {shard_of(k) for k in toy.keys}
    assert sorted(ranks[0]["eval_keys"] + ranks[1]["eval_keys"]) == sorted(toy.keys)
    assert [r["eval_length"] for r in ranks] == [r["eval_batches"] for r in ranks]
    assert [r["all_reduced_count"] for r in ranks] == [len(toy.keys)] * 2
    # training: the same number of full batches on both ranks, each from its own shards
    assert [r["train_batches"] for r in ranks] == [r["train_length"] for r in ranks] == [3, 3]
    train_shards = [{shard_of(k) for k in r["train_keys"]} for r in ranks]
    assert not train_shards[0] & train_shards[1]
    assert train_shards[0] | train_shards[1] == {shard_of(k) for k in toy.keys}
    # fewer shards than ranks: evaluation still sees every sample once, training refuses
    assert ranks[0]["small_keys"] == small.keys and ranks[1]["small_keys"] == []
    assert [r["small_length"] for r in ranks] == [2, 0]
    assert all("cannot feed 2 training ranks" in r["small_train_error"] for r in ranks)
    # DDP averaged the (different) local gradients: both ranks hold the same one
    assert ranks[0]["grad"] == pytest.approx(ranks[1]["grad"], abs=1e-7)
    assert any(abs(g) > 0 for g in ranks[0]["grad"])


def test_single_process_helpers_degrade_gracefully(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed(device="cpu")
    assert (context.rank, context.world_size, context.device.type) == (0, 1, "cpu")
    assert context.is_main and is_main_process() and get_world_size() == 1
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model) is model
    values = {"correct": 3.0}
    assert sum_over_ranks(values) == values


def test_bad_environment_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        init_distributed(device="cpu")
