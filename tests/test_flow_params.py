"""Command-line flags reach the configs the stages run with (CLI, Prefect form and config agree)."""

from __future__ import annotations

import argparse
import json

import pytest
import teacher_fixtures

from flows.cli_args import add_model_arguments, parse_model
from flows.extract import ExtractParams
from flows.train import TrainParams

tiny_dir = teacher_fixtures.tiny_dir  # session fixture: the tiny LLaVA, built once


def parse(model, argv: list[str]):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, model)
    return parse_model(model, parser.parse_args(argv))


def test_extract_flags_reach_the_teacher_config() -> None:
    params = parse(ExtractParams, [
        "--teacher", "tiny", "--quant", "8bit", "--layers", "[0, 2]", "--heads", "[1]",
        "--box-color", "[0, 255, 0]", "--box-width", "0", "--view", "crop", "--revision", "abc",
        "--max-new-tokens", "9", "--answer-mode", "generate", "--audit",
    ])  # fmt: skip
    config = json.loads(params.teacher_config_json())
    assert config["model"] == "tiny" and config["quant"] == "8bit"
    assert config["layers"] == [0, 2] and config["heads"] == [1]
    assert config["box_color"] == [0, 255, 0] and config["box_width"] == 0
    assert config["view"] == "crop" and config["revision"] == "abc"
    assert config["max_new_tokens"] == 9 and config["answer_mode"] == "generate"
    assert config["audit"] is True
    defaults = json.loads(parse(ExtractParams, []).teacher_config_json())
    assert defaults["model"] == "llava-hf/llava-1.5-7b-hf" and defaults["quant"] == "4bit"


def test_train_flags_reach_the_student_config() -> None:
    params = parse(TrainParams, [
        "--no-gate", "--kl-direction", "agt||vlm", "--kl-eps", "1e-4", "--gate-hidden", "8",
        "--model-kwargs", '{"depth": 2}', "--weights", "none", "--align-lambda", "0.5",
    ])  # fmt: skip
    student = params.student_config(num_classes=7)
    assert student.gate is False and student.kl_direction == "agt||vlm"
    assert student.kl_eps == 1e-4 and student.gate_hidden == 8 and student.align_lambda == 0.5
    assert student.model_kwargs == {"depth": 2} and student.weights == "none"
    assert student.num_classes == 7
    assert parse(TrainParams, ["--weights", ""]).student_config(3).weights is None  # timm's hub


def test_bad_flag_values_are_named() -> None:
    with pytest.raises(ValueError, match="quant"):
        parse(ExtractParams, ["--quant", "3bit"])


def test_which_entry_names_the_entry_a_run_writes(tiny_dir, tmp_path, capsys) -> None:
    from flows.extract import _open_entry, main
    from pipeline.datasets.generated import write_sample_dataset
    from pipeline.shards.build import build_shards
    from pipeline.shards.config import ShardsConfig

    raw = write_sample_dataset(tmp_path / "raw", train_per_class=1, val_per_class=1)
    argv = ["--root", str(raw), "--shards-root", str(tmp_path / "shards"), "--shard-size", "5",
            "--teacher", str(tiny_dir), "--quant", "none", "--cache-root", str(tmp_path / "cache")]  # fmt: skip
    build_shards(ShardsConfig(root=raw, shards=tmp_path / "shards", shard_size=5), progress=False)
    assert main([*argv, "--which-entry"]) == 0
    printed = capsys.readouterr().out.strip()
    assert not (tmp_path / "cache").exists()  # it only names the entry
    assert _open_entry(parse(ExtractParams, argv)).path == printed
