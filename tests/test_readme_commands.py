"""The README's commands, run as a user types them: through `make` in the repository, offline,
on the smallest data that exercises each (a 30-image TinyImageNet-layout tree written here).

Every command runs in its own process with LFI_DATA_DIR pointing at this module's temporary
data folder, so shards, caches, runs and models land there and nothing of the developer's data/
is read or written. The outputs are checked with plain readers (tarfile, zarr, json), not with
the code under test. The tests of one module share that folder and run in file order, as a
user's session would: shards, then maps, then training on them. `test_every_readme_command_is_run`
keeps the list honest: a command added to the README's table without a run here fails it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.datasets.generated import write_sample_dataset

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_STUDENT = (
    '--img-size 32 --model-kwargs \'{"patch_size": 8, "depth": 1}\' --num-workers 0 --lr 3e-3'
)
# What the README's commands table names, each run below (by the test named beside it).
RUN_HERE = {
    "make shards": "test_make_shards",
    "make tiny-teacher": "test_make_extract_with_each_teacher_kind",
    "make extract": "test_make_extract_with_each_teacher_kind",
    "make train": "test_make_train_then_eval",
    "make eval": "test_make_train_then_eval",
    "make experiment": "test_make_experiment",
    "make demo-detect": "test_make_demo_detect_and_bench_dense",
    "make dense-backbone": "test_make_demo_detect_and_bench_dense",
    "make bench-dense": "test_make_demo_detect_and_bench_dense",
    "make ui": "test_make_ui",
    "make bench": "test_make_benches",
    "make bench-gpu": "test_make_benches",
    "make bench-integrity": "test_make_benches",
    "make bench-teacher": "test_make_benches",
    "make backbone": "test_make_backbones_and_bench_science",
    "make spot-backbone": "test_make_backbones_and_bench_science",
    "make bench-science": "test_make_backbones_and_bench_science",
    "make lint": "test_make_lint",
    "make lock": "test_make_lock",
    "python -m pipeline datasets": "test_cache_and_dataset_commands",
    "python -m pipeline cache": "test_cache_and_dataset_commands",
}
# Run elsewhere, as their users run them: the scale-out pair by tests/test_cluster.py (a server
# and two workers), `make test` by CI itself.
RUN_ELSEWHERE = {
    "make cluster",
    "make launch",
    "make backbone",
    "make bench-science",
    "make test",
    "make test-fast",  # CI runs the first; the second is the first without `slow`
    "make setup",  # before every other make command here (its stamp), and from scratch by CI
}


def run(
    command: list[str], data: Path, timeout: float = 900, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LFI_DATA_DIR": str(data), "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def make(data: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(["make", "--no-print-directory", *args], data, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's LFI_DATA_DIR, with the npm Llama tokenizer copied in when this checkout
    already has it (it comes from the npm registry otherwise, as for a user)."""
    folder = tmp_path_factory.mktemp("readme-data")
    tokenizer = REPO_ROOT / "data" / "models" / "llama-tokenizer"
    if tokenizer.is_dir():
        shutil.copytree(tokenizer, folder / "models" / "llama-tokenizer")
    return folder


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TinyImageNet-layout tree: 10 classes, 2 train images each, 10 val images."""
    return write_sample_dataset(tmp_path_factory.mktemp("raw") / "tiny", 2, 1)


def entry_of(output: str) -> Path:
    """The cache entry a `make extract` printed."""
    found = re.findall(r"(/\S+/cache/[0-9a-f]{16})", output)
    assert found, output
    return Path(found[-1])


def shard_members(split_dir: Path) -> list[str]:
    names = []
    for shard in sorted(split_dir.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            names += [m.name for m in tar.getmembers()]
    return names


def test_make_shards(data, raw_root):
    for split in ("train", "val"):
        out = make(data, "shards", "DATASET=tinyimagenet", f"SPLIT={split}", f"ROOT={raw_root}",
                   "SHARD_SIZE=8").stdout  # fmt: skip
        split_dir = data / "shards" / "tinyimagenet" / split
        index = json.loads((split_dir / "index.json").read_text())
        count = 20 if split == "train" else 10
        assert sum(shard["count"] for shard in index["shards"]) == count, out
        images = [n for n in shard_members(split_dir) if n.endswith((".jpg", ".jpeg", ".png"))]
        assert len(images) == count


EXTRACT = ("extract", "DATASET=tinyimagenet", "QUANT=none")


def committed_maps(entry: Path) -> np.ndarray:
    """Every committed row's C_VLM, read with plain zarr and the commit records."""
    manifest = json.loads((entry / "manifest.json").read_text())
    c_vlm = zarr.open_group(str(entry / "maps.zarr"), mode="r")["c_vlm"][:].astype(np.float64)
    rows = []
    for shard in manifest["shards"]:
        assert (entry / "commits" / f"{shard['name']}.json").is_file(), shard
        rows.append(c_vlm[shard["row_offset"] : shard["row_offset"] + shard["count"]])
    return np.concatenate(rows)


def test_make_extract_with_each_teacher_kind(data, tmp_path):
    entries = {}
    for teacher, split in (("tiny", "train"), ("tiny", "val"), ("box", "train"),
                           ("uniform", "train"), ("tiny-llama", "train")):  # fmt: skip
        result = make(data, *EXTRACT, f"SPLIT={split}", f"TEACHER={teacher}")
        entries[teacher, split] = entry_of(result.stdout + result.stderr)
    for teacher in ("tiny", "box", "uniform", "tiny-llama"):
        maps = committed_maps(entries[teacher, "train"])
        assert maps.shape == (20, 24, 24)
        valid = maps.sum(axis=(1, 2)) > 0
        # Stored as float16: 576 roundings of at most 2**-11 relative each.
        np.testing.assert_allclose(maps[valid].sum(axis=(1, 2)), 1.0, atol=2e-3)
    uniform = committed_maps(entries["uniform", "train"])
    np.testing.assert_allclose(uniform, 1 / 576, rtol=2**-11)  # the uniform map, by definition
    assert len({entries[t, "train"] for t in ("tiny", "box", "uniform", "tiny-llama")}) == 4

    # A folder of the same files is the same teacher: same entry, nothing to compute.
    copy = tmp_path / "my-teacher"
    shutil.copytree(data / "models" / "tiny-llava", copy)
    again = make(data, *EXTRACT, "SPLIT=train", f"TEACHER={copy}")
    assert entry_of(again.stdout) == entries["tiny", "train"]
    assert "nothing to do" in again.stdout

    # A hub id that is not in the local Hugging Face cache, offline: one line saying how to
    # supply it, no traceback.
    hub = make(data, *EXTRACT, "TEACHER=llava-hf/llava-1.5-7b-hf", check=False,
               HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # fmt: skip
    assert hub.returncode != 0
    assert "Traceback" not in hub.stderr, hub.stderr
    errors = [line for line in hub.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not available offline" in errors[0], hub.stderr
    assert "TEACHER=tiny" in hub.stderr


def test_make_train_then_eval(data):
    entry = entry_of(make(data, *EXTRACT, "SPLIT=train", "TEACHER=tiny").stdout)
    make(data, "train", "DATASET=tinyimagenet", f"CACHE_ENTRY={entry}",
         "MODEL=vit_tiny_patch16_224", "WEIGHTS=none", "EPOCHS=2", "BATCH=8", "RUN=readme",
         f"TRAIN_ARGS={TINY_STUDENT}")  # fmt: skip
    run_dir = data / "runs" / "readme"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["data"]["batch_size"] == 8
    assert (run_dir / "curves.png").is_file()

    make(data, "eval", "RUN=readme", "DATASET=tinyimagenet")
    report = json.loads((run_dir / "eval-val.json").read_text())
    assert report["samples"] == 10, report
    assert report["top1"] * 10 == pytest.approx(round(report["top1"] * 10))  # k of 10 images


def test_make_experiment(data):
    override = {"dataset": "tinyimagenet", "seeds": [0], "base": {"epochs": 1, "batch": 8}}
    make(data, "experiment", "EXP=smoke", f"EXP_OVERRIDE={json.dumps(override)}")
    results = json.loads((data / "experiments" / "smoke" / "results.json").read_text())
    assert [row["variant"] for row in results["rows"]] == ["ViT", "I-ViT"], results
    cells = [cell for row in results["rows"] for cell in row["cells"].values()]
    assert all(cell["val_top1"]["n"] == 1 for cell in cells), cells  # one seed each
    assert (data / "experiments" / "smoke" / "results.md").is_file()


def test_cache_and_dataset_commands(data):
    python = str(REPO_ROOT / ".venv" / "bin" / "python")
    listing = run([python, "-m", "pipeline", "datasets"], data).stdout
    assert "tinyimagenet" in listing and "sample-coco" in listing
    root = data / "cache"
    ls = run([python, "-m", "pipeline", "cache", "ls", str(root)], data).stdout
    keys = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
    assert keys and all(key in ls for key in keys)
    entry = root / keys[0]
    show = run([python, "-m", "pipeline", "cache", "show", str(entry)], data).stdout
    assert "committed" in show
    run([python, "-m", "pipeline", "cache", "verify", str(entry)], data)
    manifest = json.loads((entry / "manifest.json").read_text())
    split_dir = data / "shards" / "tinyimagenet" / manifest["spec"]["split"]
    run([python, "-m", "pipeline", "cache", "report", str(entry), "--shards", str(split_dir)],
        data)  # fmt: skip
    report = json.loads((entry / "report.json").read_text())
    assert report and (entry / "report.png").is_file()


def result_fields(output: str, prefix: str = "RESULT ") -> list[dict[str, str]]:
    """The `key=value` fields of every RESULT line a benchmark printed."""
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    return [dict(item.split("=", 1) for item in line.split()[1:]) for line in lines]


def test_make_benches(data):
    extract = result_fields(make(data, "bench-extract", "ARGS=--images 4 --repeats 1").stdout)
    assert len(extract) == 1 and extract[0]["fidelity"] == "ok", extract
    teacher = make(data, "bench-teacher",
                   "ARGS=--images 4 --batch-sizes 1,2 --repeats 1").stdout  # fmt: skip
    assert result_fields(teacher)[0]["host_reads_per_decode_step"] == "1", teacher
    assert float(result_fields(teacher)[0]["inputs_ms_per_image"]) > 0, teacher
    student = make(data, "bench-student",
                   "ARGS=--model vit_tiny_patch16_224 --batch 2 --reps 1 --warmup 1").stdout  # fmt: skip
    assert float(result_fields(student)[0]["flops_ratio"]) > 1.0, student
    loader = make(data, "bench-loader", "ARGS=--images 64 --batch-size 16 --reps 1").stdout
    assert "join_overhead" in result_fields(loader)[0], loader
    integrity = make(data, "bench-integrity",
                     "ARGS=--images 64 --shard-size 32 --reps 1").stdout  # fmt: skip
    assert float(result_fields(integrity)[0]["sha256_mb_per_s"]) > 0, integrity
    # The GPU benchmark's whole logic on the CPU, nothing mocked: the tiny Llama-vocabulary
    # teacher in bfloat16 (so the float32 comparison runs in its own worker), both modes.
    gpu = result_fields(make(data, "bench-gpu",
                             "ARGS=--smoke --arch tiny-llama --dtype bfloat16").stdout)  # fmt: skip
    assert [fields["mode"] for fields in gpu] == ["fp16", "nf4"]
    for fields in gpu:
        assert float(fields["fast_images_per_s"]) > 0 and float(fields["speedup"]) > 0
        assert fields["same_answers"].endswith("/2") and fields["fp32_same_answers"] == "2/2"
        assert float(fields["fp32_max_map_diff"]) <= 1e-4 and fields["fidelity"] == "ok"


def test_make_backbones_and_bench_science(data):
    """The science benchmark on its smallest setting: both stand-in backbones pretrained for one
    epoch on few images (deterministic, with their cards), one seed, one epoch, one oracle."""
    small = "ARGS=--images 256 --epochs 1"
    make(data, "backbone", small)
    make(data, "spot-backbone", small)
    for name in ("shift-vit", "spot-vit"):
        card = json.loads((data / "models" / f"{name}.json").read_text())
        weights = (data / "models" / f"{name}.safetensors").read_bytes()
        assert card["sha256"] == hashlib.sha256(weights).hexdigest(), card
    out = make(data, "bench-science",
               "ARGS=--seeds 1 --epochs 1 --oracles oracle-restrict-all").stdout  # fmt: skip
    results = result_fields(out)
    assert [fields["bench"] for fields in results] == ["sample-shift", "sample-spot"], out
    for fields in results:
        assert set(fields) >= {"vit", "oracle", "ivit", "shuffled", "control", "se", "ceiling"}


def test_make_demo_detect_and_bench_dense(data):
    make(data, "dense-backbone", "ARGS=--images 64 --epochs 1")
    assert (data / "models" / "dense-vit.safetensors").is_file()
    make(data, "demo-detect", "DEMO_DETECT_EPOCHS=1")
    report = json.loads((data / "runs" / "demo-detect" / "eval-val.json").read_text())
    assert report["task"] == "detect" and "bbox_mAP" in report and "bbox_AP50" in report, report
    dense = make(data, "bench-dense", "ARGS=--epochs 1 --seeds 0").stdout
    assert re.search(r"^RESULT map_with=\S+ map_without=\S+", dense, re.M), dense


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_ui(data):
    port = free_port()
    environment = {**os.environ, "LFI_DATA_DIR": str(data)}
    process = subprocess.Popen(
        ["make", "--no-print-directory", "ui", f"PORT={port}"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        deployments: list = []
        while time.monotonic() < deadline and len(deployments) < 3:
            time.sleep(2)
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/deployments/filter",
                    data=b"{}",
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    deployments = json.loads(response.read())
            except OSError:
                assert process.poll() is None, process.stdout.read()
        names = sorted(d["name"] for d in deployments)
        assert len(names) >= 3, names
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_make_lint(data):
    make(data, "lint")


def test_make_lock(tmp_path):
    """`make lock` in a copy of the project's files (it rewrites requirements.lock): uv
    resolves pyproject.toml's ranges from the package registry and the changes are listed."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "pyproject.toml", "requirements.lock", "tools"):
        source = REPO_ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2  # mtimes kept: no setup
        copy(source, project / name)
    (project / ".venv").symlink_to(REPO_ROOT / ".venv")
    result = subprocess.run(["make", "--no-print-directory", "lock"], cwd=project,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    output = result.stdout + result.stderr
    offline_signs = ("error sending request", "failed to fetch", "dns error", "connection refused")
    if result.returncode != 0 and any(sign in output.lower() for sign in offline_signs):
        pytest.skip(f"the package registry is not reachable: {output[-300:]}")
    assert result.returncode == 0, output
    assert "requirements.lock:" in result.stdout
    listed = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed, result.stdout  # "no package changed" or one line per change
    assert (project / "requirements.lock").read_text().count("==") > 100


def readme_commands() -> set[str]:
    """The commands of the README's table: `make <target>` and `python -m <module> <verb>`."""
    text = (REPO_ROOT / "README.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    found = set()
    for line in table:
        cell = line.split("|")[1]
        found |= {f"make {t}" for t in re.findall(r"make ([a-z][a-z-]*)", cell)}
        found |= {
            f"python -m {m}" for m in re.findall(r"python -m (pipeline (?:datasets|cache))", cell)
        }
    return found


def test_every_readme_command_is_run():
    named = readme_commands()
    assert "make extract" in named and "make train" in named  # the table was found
    missing = named - RUN_HERE.keys() - RUN_ELSEWHERE
    assert not missing, f"README commands no test runs: {sorted(missing)}"
    for command, test in RUN_HERE.items():
        assert test in globals(), (command, test)
