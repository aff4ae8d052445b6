"""Command-line flags reach the configs the stages run with (CLI, Prefect form and config agree)."""

from __future__ import annotations

import argparse

import pytest
import teacher_fixtures

from flows.cli_args import add_model_arguments, add_preset_argument, parse_model
from flows.extract_params import ExtractParams
from pipeline.errors import BadParametersError
from student.train_params import TrainParams

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
    config = params.teacher_config().model_dump(mode="json")
    assert config["model"] == "tiny" and config["quant"] == "8bit"
    assert config["layers"] == [0, 2] and config["heads"] == [1]
    assert config["box_color"] == [0, 255, 0] and config["box_width"] == 0
    assert config["view"] == "crop" and config["revision"] == "abc"
    assert config["max_new_tokens"] == 9 and config["answer_mode"] == "generate"
    assert config["audit"] is True
    defaults = parse(ExtractParams, []).teacher_config().model_dump(mode="json")
    assert defaults["model"] == "llava-hf/llava-1.5-7b-hf" and defaults["quant"] == "4bit"


def test_train_flags_reach_the_student_config() -> None:
    params = parse(TrainParams, [
        "--no-gate", "--kl-direction", "agt||vlm", "--kl-eps", "1e-4", "--gate-hidden", "8",
        "--model-kwargs", '{"depth": 2}', "--weights", "none", "--align-lambda", "0.5",
    ])  # fmt: skip
    student = params.student
    assert student.gate is False and student.kl_direction == "agt||vlm"
    assert student.kl_eps == 1e-4 and student.gate_hidden == 8 and student.align_lambda == 0.5
    assert student.model_kwargs == {"depth": 2} and student.weights == "none"
    assert parse(TrainParams, ["--weights", ""]).student.weights is None  # timm's hub


def test_flat_names_and_sections_are_one_parameter() -> None:
    """`--epochs 3`, `{"epochs": 3}` and `{"train": {"epochs": 3}}` are the same run; a flat key
    set next to its section wins; `seed` seeds both the init and the data order."""
    flags = parse(TrainParams, ["--epochs", "3", "--batch", "8", "--seed", "5", "--lr", "0.01"])
    flat = TrainParams.model_validate({"epochs": 3, "batch": 8, "seed": 5, "lr": 0.01})
    nested = TrainParams.model_validate(
        {"train": {"epochs": 3, "seed": 5, "lr": 0.01}, "student": {"seed": 5},
         "data": {"batch_size": 8}}
    )  # fmt: skip
    assert flags == flat == nested
    assert (flat.train.epochs, flat.data.batch_size, flat.train.lr) == (3, 8, 0.01)
    assert flat.student.seed == flat.train.seed == 5
    mixed = TrainParams.model_validate({"train": {"epochs": 9, "lr": 0.5}, "epochs": 2})
    assert (mixed.train.epochs, mixed.train.lr) == (2, 0.5)
    # What the Prefect form sends back (every section in full) validates to the same params.
    assert TrainParams.model_validate(flat.model_dump(mode="json")) == flat
    extract = ExtractParams.model_validate({"teacher": "tiny", "dataset": "sample-coco"})
    assert extract.teacher.model == "tiny" and extract.shards.dataset == "sample-coco"
    assert extract.resolved_prompt() == "dense"  # detection datasets default to Eq. 12
    assert ExtractParams.model_validate(extract.model_dump(mode="json")) == extract


def test_defaults_have_one_source() -> None:
    """The flow's form shows the stage configs' own defaults, not copies of them."""
    from pipeline.shards.config import ShardsConfig
    from student.config import LoaderOptions, StudentConfig, TrainConfig
    from teacher.config import TeacherConfig

    train = TrainParams()
    assert train.train == TrainConfig() and train.data == LoaderOptions()
    assert train.student == StudentConfig()
    extract = ExtractParams()
    assert extract.teacher.model_dump(exclude={"prompt"}) == TeacherConfig().model_dump(
        exclude={"prompt"}
    )
    assert extract.shards == ShardsConfig()


def test_unknown_and_resolved_names_are_refused() -> None:
    """A typo, or a field the flow resolves itself (the class count, the run folder), is a
    user error naming the flag."""
    for bad in ({"epoch": 3}, {"num_classes": 10}, {"run_dir": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainParams.model_validate(bad)
    with pytest.raises(ValueError, match="--align-lambda"):
        parse(TrainParams, ["--align-lambda", "-1"])


def test_bad_flag_values_are_named() -> None:
    with pytest.raises(ValueError, match="quant"):
        parse(ExtractParams, ["--quant", "3bit"])


def test_which_entry_names_the_entry_a_run_writes(tiny_dir, tmp_path, capsys) -> None:
    from flows.extract import main
    from flows.extract_entry import create_or_open_entry as _open_entry
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


def test_a_preset_is_the_flags_it_names_and_flags_override_it() -> None:
    """`--preset demo-detect` (the Makefile's demo-detect, bench.dense) means the flags the
    Makefile spelled out before the preset file existed; a flag beside it wins."""

    def parse_with_preset(argv: list[str]) -> TrainParams:
        parser = argparse.ArgumentParser()
        add_model_arguments(parser, TrainParams)
        add_preset_argument(parser)
        return parse_model(TrainParams, parser.parse_args(argv))

    spelled_out = parse(TrainParams, [
        "--model", "vit_tiny_patch16_224", "--weights", "w.safetensors", "--img-size", "64",
        "--model-kwargs", '{"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}',
        "--batch", "8", "--lr", "1e-3", "--warmup-epochs", "0.5", "--num-workers", "1",
        "--detr", '{"num_queries": 12, "d_model": 64, "encoder_layers": 1, "decoder_layers": 2, '
        '"attention_heads": 4, "ffn_dim": 128, "dropout": 0.0, "auxiliary_loss": true}',
    ])  # fmt: skip
    assert (
        parse_with_preset(["--preset", "demo-detect", "--weights", "w.safetensors"]) == spelled_out
    )
    demo = parse_with_preset(["--preset", "demo", "--lr", "0.01"])
    assert demo.train.lr == 0.01 and demo.data.batch_size == 32  # the flag, the preset
    with pytest.raises(BadParametersError, match="no such preset"):
        parse_with_preset(["--preset", "nonesuch"])
