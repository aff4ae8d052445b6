"""The student stage end to end on the loader's real batches: tiny shards + a tiny map cache
(the loader team's toy writers) -> ShardMapLoader -> build -> fit, resumed once."""

from __future__ import annotations

import json
import warnings

import torch
from loader_fixtures import write_toy_cache, write_toy_split

from student.build import build, build_optimizer, build_scheduler
from student.classify import ClassifyTask
from student.config import StudentConfig, TrainConfig
from student.engine import fit
from student.loader import LoaderConfig, build_loader

torch.set_num_threads(1)


def test_fit_consumes_the_loaders_batches_and_resumes(tmp_path) -> None:
    train_split = write_toy_split(tmp_path / "shards", shards=2, per_shard=8)
    val_split = write_toy_split(
        tmp_path / "shards", shards=1, per_shard=8, split="val", key_prefix="v"
    )
    train_entry = write_toy_cache(tmp_path / "cache", train_split)
    val_entry = write_toy_cache(tmp_path / "cache", val_split)

    cfg = StudentConfig(
        model="vit_tiny_patch16_224", weights="none", num_classes=3, img_size=32,
        model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8},
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, criterion = build(cfg)
    data = model.data_config
    loaders = [
        build_loader(
            LoaderConfig(
                shard_dir=split.split_dir,
                cache_entry=entry.path,
                split=split.index.split,
                img_size=model.img_size,
                patch_size=model.patch_size,
                batch_size=4,
                train=split is train_split,
                num_workers=0,
                mean=data["mean"],
                std=data["std"],
            )
        )
        for split, entry in ((train_split, train_entry), (val_split, val_entry))
    ]
    train_cfg = TrainConfig(
        epochs=2, lr=1e-2, warmup_epochs=0.5, run_dir=tmp_path / "run", overlays=2
    )
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, len(loaders[0]))
    task = ClassifyTask()
    fit(task, model, criterion, optimizer, scheduler, *loaders,
        train_cfg.model_copy(update={"epochs": 1}))  # fmt: skip
    # A second call picks up the checkpoint and runs only the remaining epoch.
    rows = fit(task, model, criterion, optimizer, scheduler, *loaders, train_cfg)

    assert [r["epoch"] for r in rows] == [2]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines[-1]["step"] == 2 * len(loaders[0])
    assert lines[-1]["train_align"] > 0  # the cache's maps reached the loss
    assert set(lines[-1]["val_domains"]) == {"photo", "sketch"}  # the toy split's domains
    assert (tmp_path / "run" / "overlays" / "epoch-002.png").is_file()
