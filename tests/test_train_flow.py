"""The train and evaluate flows end to end, as `make train` / `make eval` run them: on a real
Prefect server, from toy shards joined with a toy map cache, resumed, and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loader_fixtures import is_invalid_row, write_toy_cache, write_toy_split

from flows.train import _matching_entry
from pipeline.shards.records import read_index
from student.train_params import TrainParams

TINY_VIT = [
    "--model", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32",
    "--model-kwargs", '{"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}',
    "--batch", "4", "--num-workers", "0", "--lr", "1e-2", "--warmup-epochs", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train-flow")
    train = write_toy_split(root / "shards", shards=2, per_shard=8)
    val = write_toy_split(root / "shards", shards=1, per_shard=8, split="val", key_prefix="v")
    write_toy_cache(root / "cache", train)
    write_toy_cache(root / "cache", val)
    return {"root": root, "shards": root / "shards", "cache": root / "cache", "runs": root / "runs"}


def run_module(module: str, args: list[str], api_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_args(data: dict[str, Path], run: str, epochs: int, *extra: str) -> list[str]:
    return [
        "--dataset", "toy", "--shards-root", str(data["shards"]), "--cache-root", str(data["cache"]),
        "--runs-root", str(data["runs"]), "--run", run, "--epochs", str(epochs), *TINY_VIT, *extra,
    ]  # fmt: skip


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_progress(api: str, run: str) -> list[float]:
    """The train-progress artifacts' values of the train-ivit flow runs of `run`, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    values = []
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["train-ivit"])),
            sort=FlowRunSort.START_TIME_ASC,
        )
        for flow_run in runs:
            if flow_run.parameters.get("params", {}).get("run") != run:
                continue
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])
                )
            )
            values += [float(a.data) for a in artifacts if a.key == "train-progress"]
    return values


def test_train_then_resume_then_evaluate(toy_data, prefect_server) -> None:
    run_dir = toy_data["runs"] / "r1"
    run_module("flows.train", train_args(toy_data, "r1", 1), prefect_server)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["train_cache"].startswith(str(toy_data["cache"]))  # the matching entry
    assert config["student"]["num_classes"] == 3
    for picture in ("curves.png", "overlays/epoch-001.png", "checkpoint-last.safetensors"):
        assert (run_dir / picture).stat().st_size > 0, picture
    assert [row["epoch"] for row in metrics(run_dir)] == [1]
    assert "trainable" in (run_dir / "model.txt").read_text()  # params and FLOPs vs plain ViT
    assert train_progress(prefect_server, run="r1") == [100.0]  # the UI's progress artifact
    first_weights = (run_dir / "checkpoint-last.safetensors").read_bytes()

    # Same run, more epochs: it continues from its checkpoint instead of starting over.
    output = run_module("flows.train", train_args(toy_data, "r1", 2), prefect_server).stdout
    rows = metrics(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["step"] == 2 * rows[0]["step"]
    assert (run_dir / "checkpoint-last.safetensors").read_bytes() != first_weights
    assert "run folder:" in output
    assert train_progress(prefect_server, run="r1") == [100.0, 100.0]

    eval_args = ["--run", "r1", "--runs-root", str(toy_data["runs"]), "--dataset", "toy",
                 "--split", "val", "--shards-root", str(toy_data["shards"])]  # fmt: skip
    evaluation = run_module("flows.evaluate", eval_args, prefect_server)
    result = json.loads((run_dir / "eval-val.json").read_text())
    assert result["samples"] == 8
    assert set(result["domains"]) == {"photo", "sketch"}  # toy samples alternate domains: 4 each
    photo, sketch = result["domains"]["photo"], result["domains"]["sketch"]
    assert photo * 4 == round(photo * 4) and sketch * 4 == round(sketch * 4)  # k of 4 images
    assert result["top1"] == pytest.approx((photo + sketch) / 2)  # 8 images, 4 per domain
    assert len(result["hits"]) == 8 and sum(result["hits"].values()) / 8 == result["top1"]
    assert result["domain_variance"] == pytest.approx(((photo - sketch) / 2) ** 2)  # by hand
    assert '"top1"' in evaluation.stdout
    # Without an annotation file the box mask stands in for C_HUM, and says so.
    human = result["human_alignment"]
    assert human["reference"] == "box mask (C_HUM stand-in)" and human["source"] is None
    assert human["c_vlm_entry"] == config["data"]["val_cache"]  # the run's own val maps
    val_keys = [k for s in read_index(toy_data["shards"] / "toy" / "val").shards for k in s.keys]
    with_map = sum(not is_invalid_row(k) for k in val_keys)  # C_VLM only where the map is valid
    assert 0 < with_map < 8
    for name, n in (("C_VFM last block", 8), ("C_VFM mean of blocks", 8), ("C_VLM", with_map),
                    ("C_AGT last block", 8)):  # fmt: skip
        assert human["cosine"][name]["n"] == n and 0.0 <= human["cosine"][name]["mean"] <= 1.0
    assert Path(human["figure"]).stat().st_size > 0


def test_train_under_torchrun_with_two_processes(toy_data, prefect_server) -> None:
    run_dir = toy_data["runs"] / "ddp"
    run_module("flows.train", train_args(toy_data, "ddp", 1, "--nproc", "2"), prefect_server)
    rows = metrics(run_dir)
    assert len(rows) == 1  # written by rank 0 only
    # 16 train samples on 2 ranks at batch 4: 2 steps each, in lockstep.
    assert rows[0]["step"] == 2
    assert (run_dir / "checkpoint-last.safetensors").is_file()


def test_missing_cache_entry_says_how_to_make_one(toy_data, tmp_path) -> None:
    from pipeline.shards.records import read_index

    params = TrainParams(
        dataset="toy", cache_root=str(tmp_path / "empty"), shards_root=str(toy_data["shards"])
    )
    index = read_index(toy_data["shards"] / "toy" / "train")
    with pytest.raises(FileNotFoundError, match="make extract DATASET=toy SPLIT=train"):
        _matching_entry(params, index, required=True)
    assert _matching_entry(params, index, required=False) is None


def test_several_teachers_on_one_root(toy_data, tmp_path) -> None:
    """Two teachers' maps for the same shards: training must be told which, and the val split
    follows the train split's teacher instead of mixing two."""
    from pipeline.cache import CacheEntry, CacheSpec, open_entry
    from pipeline.shards.records import read_index

    root = tmp_path / "cache"
    for split in ("train", "val"):
        index = read_index(toy_data["shards"] / "toy" / split)
        for teacher in ({"model": "teacher-a"}, {"model": "teacher-b"}):
            spec = CacheSpec(
                dataset="toy", split=split, dataset_fingerprint=index.fingerprint, teacher=teacher
            )
            CacheEntry.create_or_open(
                str(root), spec, index, grid=24, geometry={"mode": "resize", "size": 32}
            )
    params = TrainParams(dataset="toy", cache_root=str(root), shards_root=str(toy_data["shards"]))
    train_index = read_index(toy_data["shards"] / "toy" / "train")
    with pytest.raises(ValueError, match="CACHE_ENTRY"):
        _matching_entry(params, train_index, required=True)
    val_index = read_index(toy_data["shards"] / "toy" / "val")
    chosen = _matching_entry(params, val_index, required=False, teacher={"model": "teacher-b"})
    assert open_entry(chosen).spec.teacher == {"model": "teacher-b"}
