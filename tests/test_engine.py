"""Engine: a stopped-and-resumed run ends with the uninterrupted run's weights (CPU), evaluation
per domain, the schedule's shape, and checkpoints that refuse a different backbone."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from student.build import build, build_optimizer, build_scheduler
from student.classify import ClassifyTask
from student.config import StudentConfig, TrainConfig
from student.engine import evaluate, fit
from student.run_state import TrainingState, load_checkpoint, save_checkpoint

torch.set_num_threads(1)

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8, "drop_rate": 0.1}


def student_cfg(**overrides) -> StudentConfig:
    base = {
        "model": "vit_tiny_patch16_224",
        "weights": "none",
        "num_classes": 4,
        "img_size": 32,
        "model_kwargs": TINY,  # drop_rate > 0: resume must also restore the RNG
    }
    return StudentConfig(**{**base, **overrides})


def batches(count: int = 3, size: int = 4, seed: int = 0, domains: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        c_vlm = torch.rand(size, 4, 4, generator=g)
        valid = torch.tensor([True, i % 2 == 0, True, False][:size])
        c_vlm = c_vlm / c_vlm.sum(dim=(1, 2), keepdim=True) * valid.view(-1, 1, 1)
        batch = {
            "image": torch.randn(size, 3, 32, 32, generator=g),
            "label": torch.randint(0, 4, (size,), generator=g),
            "c_vlm": c_vlm,
            "map_valid": valid,
            "key": [f"s{i}-{j}" for j in range(size)],
        }
        if domains:
            batch["domain"] = ["photo", "sketch"] * (size // 2)
        out.append(batch)
    return out


def make_run(run_dir, epochs: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, criterion = build(student_cfg())
    train_cfg = TrainConfig(
        epochs=epochs, lr=1e-2, warmup_epochs=1, run_dir=run_dir, overlays=2, grad_clip=1.0
    )
    # The schedule is planned for the full 4 epochs in both runs, as a real resume would be.
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg.model_copy(update={"epochs": 4}), 3)
    return model, criterion, optimizer, scheduler, train_cfg


def run(run_dir, epochs: int, seed: int = 123) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, criterion, optimizer, scheduler, train_cfg = make_run(run_dir, epochs)
    fit(ClassifyTask(), model, criterion, optimizer, scheduler, batches(), batches(2, seed=9),
        train_cfg)  # fmt: skip
    return model


@pytest.mark.slow
def test_resume_after_a_stop_equals_the_uninterrupted_run(tmp_path) -> None:
    straight = run(tmp_path / "straight", epochs=4)
    run(tmp_path / "resumed", epochs=2)
    # A fresh process would start with some other RNG state: the checkpoint must restore it.
    resumed = run(tmp_path / "resumed", epochs=4, seed=999)

    expected = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    got = dict(resumed.named_parameters())
    assert expected, "nothing trained"
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    start = {n: p for n, p in run(tmp_path / "fresh", epochs=0 + 1).named_parameters()}
    assert any(not torch.equal(start[n], v) for n, v in expected.items())  # it did move

    rows = [
        json.loads(line)
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    straight_rows = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["train_loss"] for r in straight_rows] == [r["train_loss"] for r in rows]
    for name in ("curves.png", "overlays/epoch-004.png", "checkpoint-last.json"):
        assert (tmp_path / "resumed" / name).is_file(), name
    # The checkpoint is plain safetensors: readable without this project, no pickle anywhere.
    tensors = load_file(str(tmp_path / "resumed" / "checkpoint-last.safetensors"))
    assert "model.vit.head.weight" in tensors
    assert any(k.startswith("optimizer.vit.blocks.0.attn.interaction_q.weight.") for k in tensors)


def test_checkpoint_refuses_another_backbone(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build(student_cfg())
        other, _ = build(student_cfg(seed=1))
    optimizer = build_optimizer(model, TrainConfig())
    save_checkpoint(tmp_path / "ck", model, optimizer, TrainingState(epoch=1, step=3))
    with pytest.raises(ValueError, match="frozen backbone differs"):
        load_checkpoint(tmp_path / "ck", other)
    assert load_checkpoint(tmp_path / "ck", model) == TrainingState(epoch=1, step=3)


class LogitsAreTheImage(torch.nn.Module):
    """A stand-in model whose predictions the test chooses directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_evaluate_reports_top1_per_domain_and_their_variance() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 1, 0, 0, 1])
    domains = ["photo", "sketch", "sketch", "art", "photo", "sketch"]
    keys = ["a", "b", "c", "d", "e", "f"]
    loader = [
        {"image": logits[:3], "label": labels[:3], "domain": domains[:3], "key": keys[:3]},
        {"image": logits[3:], "label": labels[3:], "domain": domains[3:], "key": keys[3:]},
    ]
    result = evaluate(LogitsAreTheImage(), loader, torch.device("cpu"), per_sample=True)
    # photo: hit, miss -> 0.5; sketch: hit, miss, hit -> 2/3; art: hit -> 1.
    assert result["top1"] == pytest.approx(4 / 6)
    assert result["hits"] == {"a": 1, "b": 1, "c": 0, "d": 1, "e": 0, "f": 1}
    assert result["domains"] == pytest.approx({"art": 1.0, "photo": 0.5, "sketch": 2 / 3})
    assert result["domain_variance"] == pytest.approx(np.var([1.0, 0.5, 2 / 3]))
    ce = [
        -math.log(math.exp(row[y]) / sum(math.exp(v) for v in row))
        for row, y in zip(logits.tolist(), labels.tolist(), strict=True)
    ]
    assert result["loss"] == pytest.approx(sum(ce) / 6, rel=1e-6)


def test_schedule_warms_up_linearly_then_follows_a_cosine() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    cfg = TrainConfig(epochs=3, lr=1.0, min_lr=0.0, warmup_epochs=1, warmup_lr=0.0)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=4)  # 4 warm-up + 8 cosine steps
    lrs = []
    for step in range(13):
        scheduler.step_update(num_updates=step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    cosine = [0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(9)]
    assert lrs[4:] == pytest.approx(cosine, abs=1e-9)
