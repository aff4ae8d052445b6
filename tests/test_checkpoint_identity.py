"""A checkpoint is named by what its maps depend on (teacher.weights.identity), both ways: the same
values in any spelling (folder name, JSON formatting and key order) give one cache key, and a
changed value (weights, config, processor, tokenizer) gives another. The hub id against a local
copy of its snapshot is checked in tests/test_offline_hub.py (it needs an offline process)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import teacher_fixtures
from teacher_fixtures import VOCABULARY

from pipeline.cache import CacheSpec, cache_key
from teacher import TeacherConfig, describe_teacher
from teacher.weights.identity import DigestMemo, checkpoint_identity

tiny_dir = teacher_fixtures.tiny_dir  # session fixture


def key_of(folder: Path) -> str:
    teacher = describe_teacher(TeacherConfig(model=str(folder), device="cpu"), VOCABULARY)
    spec = CacheSpec(dataset="d", split="train", dataset_fingerprint="fp", teacher=teacher.spec())
    return cache_key(spec)


def rewrite_json(path: Path, change=None, indent: int | None = None, reverse: bool = False) -> None:
    values = json.loads(path.read_text())
    if change is not None:
        change(values)
    if reverse:
        values = dict(reversed(list(values.items())))
    path.write_text(json.dumps(values, indent=indent))


@pytest.fixture()
def copy_of(tiny_dir, tmp_path):
    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_dir, folder)
        return folder

    return copy


def test_same_values_in_any_spelling_share_one_key(copy_of):
    original = key_of(copy_of("tiny-llava"))
    assert key_of(copy_of("my-teacher")) == original  # the folder's name is not the teacher
    reformatted = copy_of("reformatted")
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        rewrite_json(reformatted / name, indent=7, reverse=True)  # reordered and re-indented
    # Provenance, not a value the model reads.
    rewrite_json(reformatted / "config.json", lambda c: c.update(transformers_version="0.0.1"))
    (reformatted / "README.md").write_text("a model card changes no map\n")
    assert key_of(reformatted) == original


def set_rope_theta(config: dict) -> None:
    config["text_config"]["rope_theta"] = 1234.0


def set_image_mean(processor: dict) -> None:
    processor["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]


def add_merge(tokenizer: dict) -> None:
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]


@pytest.mark.parametrize(
    ("file", "change"),
    [
        ("config.json", set_rope_theta),
        ("processor_config.json", set_image_mean),
        ("tokenizer.json", add_merge),
    ],
)
def test_a_changed_value_gives_another_key(copy_of, file, change):
    original = key_of(copy_of("original"))
    changed = copy_of("changed")
    rewrite_json(changed / file, change)
    assert key_of(changed) != original


def test_changed_weight_bytes_give_another_key(copy_of):
    original = key_of(copy_of("original"))
    changed = copy_of("changed")
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's data
    weights.write_bytes(bytes(data))
    assert key_of(changed) != original


def test_weights_are_hashed_once_and_again_when_they_change(tiny_dir, tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()  # the independent reference
    memo_file = tmp_path / "memo.json"
    identity = checkpoint_identity(folder, DigestMemo(memo_file))
    assert identity["weights_sha256"] == {"model.safetensors": expected}
    assert list(json.loads(memo_file.read_text()).values()) == [expected]

    # A remembered digest is used as long as the file's size and mtime say it is the same file.
    stat = weights.stat()
    memo = json.loads(memo_file.read_text())
    memo_file.write_text(json.dumps(dict.fromkeys(memo, "f" * 64)))
    assert checkpoint_identity(folder, DigestMemo(memo_file))["weights_sha256"] == {
        "model.safetensors": "f" * 64
    }
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: read again
    assert checkpoint_identity(folder, DigestMemo(memo_file))["weights_sha256"] == {
        "model.safetensors": expected
    }


def test_a_hub_cache_blob_is_named_by_its_sha256(tmp_path):
    """In the Hugging Face cache an LFS file links to blobs/<sha256>: nothing is read."""
    blobs = tmp_path / "models--org--name" / "blobs"
    blobs.mkdir(parents=True)
    name = "ab" * 32
    (blobs / name).write_bytes(b"not read")
    snapshot = tmp_path / "models--org--name" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blobs / name, snapshot))
    memo = DigestMemo(None)
    assert memo.sha256(snapshot / "model.safetensors") == name
