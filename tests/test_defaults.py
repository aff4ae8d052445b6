"""Every default is declared once: the Makefile passes a flag only when its variable is set, and
the command lines, the Prefect forms and the config models read the same constant.

Checked the way a user meets them: `make -n` (what make would run) for the Makefile, the
argparse parsers for the command lines, and the pydantic models for the forms.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The Makefile variables that become flags of a command (the interface the README documents).
FLAG_VARIABLES = [
    "DATASET",
    "ROOT",
    "SPLIT",
    "SHARDS",
    "SHARD_SIZE",
    "TEACHER",
    "QUANT",
    "CACHE",
    "AUDIT",
    "BATCH_SIZE",
    "PROMPT",
    "BOXES",
    "MODEL",
    "WEIGHTS",
    "EPOCHS",
    "BATCH",
    "FRACTION",
    "RUN",
    "EVAL_SPLIT",
    "TRAIN_ARGS",
    "TASK",
    "CACHE_ENTRY",
    "HUMAN",
    "EVAL_ENTRY",
    "WORKERS",
    "GPUS",
    "HOST",
    "PORT",
    "POOL",
    "RUNS",
    "EXP",
    "EXP_OVERRIDE",
    "VOCAB",
    "ARGS",
]


def makefile_defaults() -> dict[str, str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return {m[1]: m[2].strip() for m in re.finditer(r"^(\w+)\s*\?=(.*)$", text, re.M)}


def test_makefile_declares_no_default_of_its_own():
    defaults = makefile_defaults()
    declared = {name: defaults.get(name) for name in FLAG_VARIABLES}
    assert all(value == "" for value in declared.values()), {
        k: v for k, v in declared.items() if v != ""
    }


def dry_run(*args: str) -> str:
    return subprocess.run(
        ["make", "-n", "--no-print-directory", *args], cwd=REPO_ROOT, capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip


@pytest.mark.parametrize(
    ("target", "flags"),
    [
        (
            "train",
            ["--epochs", "--batch", "--shard-size", "--shards-root", "--cache-root", "--model"],
        ),
        ("extract", ["--teacher", "--quant", "--shard-size", "--batch-size", "--cache-root"]),
        ("shards", ["--dataset", "--split", "--shard-size", "--out"]),
        ("ui", ["--port"]),
        ("cluster", ["--port", "--workers", "--pool", "--host"]),
    ],
)
def test_an_unset_variable_passes_no_flag_and_a_set_one_does(target, flags):
    commands = dry_run(target, "RUN=").replace("\\\n", " ").splitlines()  # joined continuations
    python_line = next(c for c in commands if " -m " in c and " -m pip " not in c)
    for flag in flags:
        assert f"{flag} " not in python_line + " ", (flag, python_line)
    assert "--epochs 3" in dry_run("train", "EPOCHS=3")


def test_every_shard_size_default_is_the_shards_config_one():
    import argparse

    from flows.cli_args import add_model_arguments
    from flows.extract_params import ExtractParams
    from pipeline.cli import build_parser
    from pipeline.shards.config import DEFAULT_SHARD_SIZE, ShardsConfig
    from student.train_params import TrainParams

    assert ShardsConfig().shard_size == DEFAULT_SHARD_SIZE
    assert ExtractParams().shards.shard_size == DEFAULT_SHARD_SIZE
    assert TrainParams().shard_size == DEFAULT_SHARD_SIZE
    assert build_parser().parse_args(["shards"]).shard_size == DEFAULT_SHARD_SIZE
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, ExtractParams)  # unset flags keep the model's default
    assert parser.parse_args([]).shard_size is None


def test_the_layers_and_the_criterion_read_the_student_config():
    """align_lambda, kl_eps, kl_direction, gate_hidden and align_last_blocks have one default,
    StudentConfig's: the modules take the config itself, so a value set there arrives."""
    import inspect

    from student.build import build
    from student.config import StudentConfig
    from student.layers import InteractionAttention
    from student.loss import InteractionCriterion

    for module in (InteractionAttention, InteractionCriterion):
        defaults = [p.name for p in inspect.signature(module).parameters.values()
                    if p.default is not inspect.Parameter.empty]  # fmt: skip
        assert defaults == [], (module.__name__, defaults)
    cfg = StudentConfig(
        model="vit_tiny_patch16_224", weights="none", img_size=32, num_classes=3,
        model_kwargs={"patch_size": 8, "depth": 2}, gate_hidden=5, kl_eps=1e-3, align_lambda=0.3,
        kl_direction="agt||vlm", align_last_blocks=1,
    )  # fmt: skip
    model, criterion = build(cfg)
    hidden = {m.out_features for m in model.vit.blocks[0].attn.gate.modules()
              if isinstance(m, torch.nn.Linear)}  # fmt: skip
    assert 5 in hidden
    assert (criterion.kl_eps, criterion.align_lambda, criterion.kl_direction) == (
        1e-3,
        0.3,
        "agt||vlm",
    )
    assert criterion.last_blocks == 1
