"""Without network: the hub's reachability is decided by one short probe, checkpoints already in
the local Hugging Face cache load without it (with a note), and missing ones fail in seconds with
one message that says how to supply them, never a retry storm or a traceback.

The subprocess tests make the hub unreachable the way a cut-off machine sees it: HF_ENDPOINT
points at a closed port on 127.0.0.1 and HF_HUB_OFFLINE is unset, so the probe itself decides.
A checkpoint is put into a temporary cache in huggingface_hub's documented layout
(models--org--name/{blobs,refs/main,snapshots/<commit>}), written here by hand as the
independent reference of what a download leaves behind.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import teacher_fixtures
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

import pipeline.hub
from pipeline.hub import HubAccess, probe
from teacher import TeacherConfig, describe_teacher
from teacher.weights.hub_weights import TeacherWeightsError, ensure_teacher_files

tiny_dir = teacher_fixtures.tiny_dir  # session fixture

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY_TEACHER_ID = "lfi-test/tiny-llava"
TIMM_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # what timm fetches for vit_tiny
# Generous: a guard against a hang, not a timing assertion (imports alone take seconds here).
SUBPROCESS_TIMEOUT_S = 180


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def put_in_hf_cache(hub_cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """`files` (name in the repo -> file here) as a download of `repo_id` at COMMIT; returns
    the snapshot folder."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def offline_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a process on a machine that cannot reach the hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}  # fmt: skip
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # closed: refused at once
        HF_HOME=str(tmp_path / "hf-home"),
        LFI_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=str(REPO_ROOT),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def run_offline(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        env=offline_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def assert_one_clear_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "Retrying" not in output, output
    assert output.count("error: ") == 1, output
    for text in expected:
        assert text in result.stderr, output


@pytest.mark.slow
def test_default_teacher_without_network_fails_with_the_fix(tmp_path):
    result = run_offline(["-m", "flows.extract", "--dataset", "sample"], tmp_path)
    assert_one_clear_error(
        result,
        "Hugging Face hub unreachable",
        "not available offline",
        "llava-hf/llava-1.5-7b-hf",
        str(tmp_path / "hf-home" / "hub"),  # where it was looked for
        "hf download llava-hf/llava-1.5-7b-hf",
        "TEACHER=/path/to/",
        "TEACHER=tiny",
    )


@pytest.mark.slow
def test_default_backbone_without_network_fails_with_the_fix(tmp_path):
    result = run_offline(["-m", "flows.train", "--dataset", "sample"], tmp_path)
    assert_one_clear_error(
        result,
        "Hugging Face hub unreachable",
        "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        str(tmp_path / "hf-home" / "hub"),
        "hf download timm/vit_small_patch16_224.augreg_in21k_ft_in1k model.safetensors",
        "WEIGHTS=/path/to/",
        "WEIGHTS=none",
    )


PROJECTOR = "multi_modal_projector.linear_1.weight"  # unquantized, whatever the key prefix
LOAD_BOTH = f"""
import json
from student.config import StudentConfig
from student.model import create_backbone
from teacher import TeacherConfig, load_teacher
cfg = TeacherConfig(model={TINY_TEACHER_ID!r}, quant="none", dtype="float32", device="cpu")
teacher = load_teacher(cfg, vocabulary=["circle"])
projector = next(v for k, v in teacher.model.state_dict().items() if k.endswith({PROJECTOR!r}))
vit = create_backbone(StudentConfig(model="vit_tiny_patch16_224", num_classes=3,
                                    model_kwargs={{"depth": 1}}))
print(json.dumps({{"weights": teacher.spec()["weights"], "projector": projector.double().sum().item(),
                   "qkv": vit.blocks[0].attn.qkv.weight.double().sum().item()}}))
"""


@pytest.mark.slow
def test_checkpoints_in_local_hf_cache_load_without_network(tiny_dir, tmp_path):
    """The tiny teacher under a hub id, and a timm ViT under the id timm fetches, in a fresh
    cache; one process loads both (one subprocess start instead of two)."""
    hub_cache = tmp_path / "hf-home" / "hub"
    put_in_hf_cache(hub_cache, TINY_TEACHER_ID, {p.name: p for p in tiny_dir.iterdir() if p.is_file()})  # fmt: skip
    torch.manual_seed(123)  # weights unlike the seeded random init of create_backbone
    vit_state = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).state_dict()
    save_file(vit_state, tmp_path / "model.safetensors")
    put_in_hf_cache(hub_cache, TIMM_ID, {"model.safetensors": tmp_path / "model.safetensors"})

    result = run_offline(["-c", LOAD_BOTH], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Retrying" not in output
    assert output.count("Hugging Face hub unreachable") == 1, output  # decided once per process
    assert f"teacher {TINY_TEACHER_ID}: the hub is not used" in result.stderr, output
    assert f"{TIMM_ID}/model.safetensors from the local Hugging Face cache" in result.stderr, output
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    # Named by content: the hub id's snapshot and the local folder are one teacher, one key.
    weights_bytes = (tiny_dir / "model.safetensors").read_bytes()
    assert loaded["weights"]["weights_sha256"] == {
        "model.safetensors": hashlib.sha256(weights_bytes).hexdigest()
    }
    local = describe_teacher(TeacherConfig(model=str(tiny_dir), device="cpu"), ["circle"])
    assert loaded["weights"] == local.spec()["weights"]
    saved = load_file(tiny_dir / "model.safetensors")
    projector = next(v for k, v in saved.items() if k.endswith(PROJECTOR)).double().sum().item()
    assert loaded["projector"] == pytest.approx(projector, rel=1e-6)
    qkv = vit_state["blocks.0.attn.qkv.weight"].double().sum().item()
    assert loaded["qkv"] == pytest.approx(qkv, rel=1e-6)


def test_probe_tells_refused_from_answered(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest's default: no requests
    refused = probe(f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    assert not refused.online and "no answer from" in refused.reason

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answered = probe(f"http://127.0.0.1:{server.server_port}", timeout_s=2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert answered.online, answered.reason


@pytest.fixture
def offline_cache(monkeypatch, tmp_path) -> Path:
    """This process offline (as decided) with an empty hub cache under tmp_path."""
    monkeypatch.setattr(pipeline.hub, "_decided", HubAccess(False, "HF_HUB_OFFLINE=1 is set"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_partial_download_names_what_is_missing(offline_cache, tiny_dir, tmp_path):
    put_in_hf_cache(offline_cache, "org/no-weights", {"config.json": tiny_dir / "config.json"})
    with pytest.raises(TeacherWeightsError, match=r"lacks its weights \(model\.safetensors"):
        ensure_teacher_files("org/no-weights", None)
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))  # fmt: skip
    put_in_hf_cache(
        offline_cache,
        "org/one-shard",
        {
            "config.json": tiny_dir / "config.json",
            "model.safetensors.index.json": index,
            "model-1.safetensors": tiny_dir / "model.safetensors",
        },
    )
    with pytest.raises(TeacherWeightsError, match=r"weight shard\(s\) model-2\.safetensors"):
        ensure_teacher_files("org/one-shard", None)
    ensure_teacher_files(str(tiny_dir), None)  # a local folder is never looked up in the cache


def test_user_offline_setting_skips_the_probe(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probed although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(pipeline.hub, "_decided", None)
    monkeypatch.setattr(pipeline.hub, "probe", no_probe)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    access = pipeline.hub.hub_access()
    assert not access.online and "HF_HUB_OFFLINE" in access.reason
    assert pipeline.hub.hub_access() is access  # once per process


def test_tasks_do_not_retry_what_only_the_user_can_fix():
    from prefect.states import Failed

    from flows.retries import retry_unless_user_error
    from student.backbone_weights import WeightsUnavailableError

    # Failed(data=exception) is the state Prefect's task engine hands the condition.
    for error in (TeacherWeightsError("offline"), WeightsUnavailableError("offline")):
        assert not retry_unless_user_error(None, None, Failed(data=error))
    assert retry_unless_user_error(None, None, Failed(data=TimeoutError("busy shared cache")))
