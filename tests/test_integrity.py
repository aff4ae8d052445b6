"""Integrity on read (issue 22), end to end through the commands a user types: damage one file of
a small sample-dataset extraction, see the run stop with one `error:` line that names the file,
the rows and the repair, run the repair, and get back exactly the undamaged arrays and files
(read with plain zarr, tarfile and json, never through pipeline.cache)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from teacher_fixtures import tiny_dir  # noqa: F401  (the session's tiny LLaVA, a fixture)

from pipeline.datasets.generated import write_sample_dataset

SHARD_SIZE = 5  # 20 train images: 4 shards; 10 val images: 2 shards
TINY_VIT = [
    "--model", "vit_tiny_patch16_224", "--weights", "none", "--img-size", "32",
    "--model-kwargs", '{"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}',
    "--batch", "4", "--num-workers", "1", "--epochs", "1", "--warmup-epochs", "0",
]  # fmt: skip
ARRAYS = ("c_vlm", "c_fore", "c_back", "valid", "fg_correct", "key", "reason", "answer")


def run(module: str, args: list[str], api: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=600
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run stopped as a user error: exit 2, one `error:` line, no traceback."""
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


class Tree:
    """A copy of the clean shards and cache to damage, with the commands that act on it."""

    def __init__(self, base: Path, clean: dict[str, Any], api: str) -> None:
        self.raw, self.api, self.teacher = clean["raw"], api, clean["teacher"]
        self.shards, self.cache, self.runs = base / "shards", base / "cache", base / "runs"
        shutil.copytree(clean["shards"], self.shards)
        shutil.copytree(clean["cache"], self.cache)
        self.entry = next(self.cache.iterdir())
        self.split_dir = self.shards / "sample" / "train"

    def extract(self, cache: Path | None = None) -> subprocess.CompletedProcess:
        return run("flows.extract", extract_args(self.raw, self.shards, cache or self.cache,
                                                 self.teacher), self.api)  # fmt: skip

    def train(self, *extra: str) -> subprocess.CompletedProcess:
        args = ["--dataset", "sample", "--shards-root", str(self.shards), "--shard-size",
                str(SHARD_SIZE), "--cache-root", str(self.cache), "--runs-root", str(self.runs),
                "--run", "r", *TINY_VIT, *extra]  # fmt: skip
        return run("flows.train", args, self.api)

    def shards_command(self, split: str = "train") -> subprocess.CompletedProcess:
        args = ["shards", "--dataset", "sample", "--split", split, "--root", str(self.raw),
                "--out", str(self.shards), "--shard-size", str(SHARD_SIZE)]  # fmt: skip
        return run("pipeline", args, self.api)

    def verify(self, *extra: str) -> subprocess.CompletedProcess:
        return run("pipeline", ["cache", "verify", str(self.entry), *extra], self.api)

    def chunk(self, array: str, shard: int) -> Path:
        per_row = "/0/0" if array.startswith("c_") else ""
        return self.entry / "maps.zarr" / array / "c" / f"{shard}{per_row}"


def extract_args(raw: Path, shards: Path, cache: Path, teacher: Path) -> list[str]:
    """`make extract` with the tiny teacher, in float32 (bitwise repeatable on the CPU)."""
    return ["--dataset", "sample", "--split", "train", "--root", str(raw), "--shards-root",
            str(shards), "--shard-size", str(SHARD_SIZE), "--teacher", str(teacher), "--quant",
            "none", "--dtype", "float32", "--previews", "0", "--cache-root", str(cache)]  # fmt: skip


def plain_arrays(entry: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(entry / "maps.zarr"), mode="r")
    return {name: group[name][:] for name in ARRAYS}


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, prefect_server, tiny_dir) -> dict[str, Any]:  # noqa: F811
    """Sample shards (train and val) and the tiny teacher's fully committed train entry."""
    base = tmp_path_factory.mktemp("integrity-clean")
    raw = write_sample_dataset(base / "raw", train_per_class=2, val_per_class=1)
    paths = {"raw": raw, "shards": base / "shards", "cache": base / "cache"}
    tree_args = ["--dataset", "sample", "--root", str(raw), "--out", str(paths["shards"]),
                 "--shard-size", str(SHARD_SIZE)]  # fmt: skip
    for split in ("train", "val"):
        ok(run("pipeline", ["shards", "--split", split, *tree_args], prefect_server))
    extract = extract_args(raw, paths["shards"], paths["cache"], tiny_dir)
    ok(run("flows.extract", extract, prefect_server))
    entry = next(paths["cache"].iterdir())
    return {
        **paths,
        "teacher": tiny_dir,
        "arrays": plain_arrays(entry),
        "commits": files_of(entry / "commits"),
        "train_files": files_of(paths["shards"] / "sample" / "train"),
    }


@pytest.fixture()
def tree(tmp_path, clean, prefect_server) -> Tree:
    return Tree(tmp_path, clean, prefect_server)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("array", "damage", "reason"),
    [("c_vlm", flip_a_byte, "does not decode"), ("valid", Path.unlink, "is missing")],
    ids=["flipped-byte-in-c_vlm", "deleted-valid-chunk"],
)
def test_a_damaged_map_chunk_stops_training_and_verify_repair_redoes_only_its_shard(
    tree: Tree, clean, array, damage, reason
) -> None:
    damage(tree.chunk(array, 1))

    line = one_error_line(tree.train())
    for name in (str(tree.entry), "shard-000001.tar", "rows 5-9", reason, "--repair"):
        assert name in line, line
    assert not (tree.runs / "r" / "metrics.jsonl").exists()  # stopped before any step

    found = tree.verify()
    assert found.returncode == 1 and "shard-000001.tar rows 5-9" in found.stdout, found.stdout
    repaired = ok(tree.verify("--repair"))
    assert "marked 1 shard(s) pending: shard-000001.tar" in repaired
    # Only the damaged shard was uncommitted: the other commit records are the same bytes.
    left = files_of(tree.entry / "commits")
    assert set(left) == set(clean["commits"]) - {"shard-000001.tar.json"}
    assert all(left[name] == clean["commits"][name] for name in left)

    ok(tree.extract())
    assert "OK (4 committed shard(s) verified, 0 pending)" in ok(tree.verify())
    after = plain_arrays(tree.entry)
    for name in ARRAYS:
        np.testing.assert_array_equal(after[name], clean["arrays"][name], err_msg=name)


def truncate(tree: Tree) -> str:
    path = tree.split_dir / "shard-000002.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "shard-000002.tar"


def replace_with_val_shard(tree: Tree) -> str:
    shutil.copyfile(
        tree.shards / "sample" / "val" / "shard-000000.tar", tree.split_dir / "shard-000001.tar"
    )
    return "shard-000001.tar"


def index_disagrees(tree: Tree) -> str:
    """index.json names another sha256 for shard 3 and is otherwise self-consistent (its
    fingerprint recomputed, as a tool that rewrites indexes would)."""
    from pipeline.shards.records import read_index

    index = read_index(tree.split_dir)
    index.shards[3].sha256 = hashlib.sha256(b"another file").hexdigest()
    index.fingerprint = index.compute_fingerprint()
    (tree.split_dir / "index.json").write_text(json.dumps(index.model_dump(), indent=1))
    return "shard-000003.tar"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "rows"),
    [
        (truncate, "rows 10-14"),
        (replace_with_val_shard, "rows 5-9"),
        (index_disagrees, "rows 15-19"),
    ],
    ids=["truncated-tar", "tar-of-another-split", "index-sha256-disagrees"],
)
@pytest.mark.parametrize("command", ["train", "extract"])
def test_a_damaged_shard_stops_the_run_and_make_shards_rewrites_it(
    tree: Tree, clean, damage, rows, command, tmp_path
) -> None:
    name = damage(tree)
    fresh_cache = tmp_path / "fresh-cache"  # extraction: every shard pending
    result = tree.train() if command == "train" else tree.extract(fresh_cache)
    line = one_error_line(result)
    for part in (str(tree.split_dir / name), rows, "make shards DATASET=sample SPLIT=train",
                 f"SHARD_SIZE={SHARD_SIZE}"):  # fmt: skip
        assert part in line, line
    if command == "extract":  # checked before any teacher work: nothing committed
        assert not list(fresh_cache.glob("*/commits/*.json"))
    assert files_of(tree.entry / "commits") == clean["commits"]  # committed maps untouched

    rewritten = ok(tree.shards_command())
    assert f"rewrote damaged {name}" in rewritten
    assert files_of(tree.split_dir) == clean["train_files"]  # tars and index.json, byte for byte
    assert "OK (4 committed" in ok(tree.verify("--shards", str(tree.split_dir)))
    if command == "extract":
        ok(tree.extract(fresh_cache))
        after = plain_arrays(fresh_cache / tree.entry.name)  # the undamaged index's key
        for array in ARRAYS:
            np.testing.assert_array_equal(after[array], clean["arrays"][array], err_msg=array)


@pytest.mark.slow
def test_skip_bad_rows_trains_past_a_damaged_chunk_and_says_how_many(tree: Tree) -> None:
    flip_a_byte(tree.chunk("c_vlm", 2))
    result = tree.train("--skip-bad-rows")
    ok(result)
    assert "skipping 5 bad map row(s) in 1 shard(s)" in result.stderr + result.stdout
    rows = [json.loads(x) for x in (tree.runs / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(v) for v in rows[-1].values() if isinstance(v, float))
