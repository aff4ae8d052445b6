"""The benchmarks of `make bench-science` and their data, held in memory.

Each benchmark is a generated dataset with a class-correlated cue in train/val that is independent
of the class in `test_shift` (and in `train_indep`, the ceiling's train split), a stand-in backbone
whose frozen features know the shapes and the cue, and the teacher whose maps are right there:

- `sample-shift`: the cue is the background colour (inside every box too); maps: TEACHER=box.
- `sample-spot`: the cue is a marker in a band the shapes never enter; maps: TEACHER=mask.

Everything goes through the project's own code: the generators, shards (ensure_shards), the
correct maps as cache entries (the extract flow) and batches from the student loader (maps
resampled to the student's grid).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiments.backbones import backbone as bb
from pipeline.datasets.adapters.base import make_key
from pipeline.io import file_sha256
from pipeline.shards.build import ensure_shards
from pipeline.shards.config import ShardsConfig
from student.config import StudentConfig
from student.loader import LoaderConfig, build_loader
from student.model import create_backbone

# A loaded 2-core machine can take longer than Prefect's 20 s to start its ephemeral server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
SPLITS = ("train", "val", "test_shift", "train_indep")
MAPPED_SPLITS = ("train", "val", "test_shift")  # the oracle reads maps at test time too
MEAN = STD = (0.5, 0.5, 0.5)  # timm's ViT normalization, as the backbones were trained
KEYS = ("image", "label", "c_vlm", "map_valid")


@dataclass(frozen=True)
class Benchmark:
    name: str  # the registry's dataset name
    cue: str  # what the shortcut is
    teacher: str  # the baseline teacher whose maps are right here
    default_weights: Path
    make_target: str  # how to build the backbone
    correlation: float  # P(cue names the class) in train/val, fixed by the ViT baseline alone
    write: Callable[[Path, float], Path]  # (raw root, correlation) -> root
    cue_listing: str  # under the raw root: test_shift's "<file>\t<cue index>" lines

    def task(self) -> bb.PretrainTask:
        return bb.task_named("spot" if self.name == "sample-spot" else "shift")


def _write_shift(root: Path, correlation: float) -> Path:
    from pipeline.datasets.shift import write_shift_dataset

    return write_shift_dataset(root, correlation=correlation)


def _write_spot(root: Path, correlation: float) -> Path:
    from pipeline.datasets.spot import write_spot_dataset

    return write_spot_dataset(root, correlation=correlation)


def benchmarks() -> dict[str, Benchmark]:
    from pipeline.datasets.shift import CORRELATION as SHIFT_CORRELATION
    from pipeline.datasets.spot import CORRELATION as SPOT_CORRELATION

    return {
        "sample-shift": Benchmark(
            "sample-shift", "background colour", "box", bb.DEFAULT_OUT, "make backbone",
            SHIFT_CORRELATION, _write_shift, "test_shift/backgrounds.txt",
        ),
        "sample-spot": Benchmark(
            "sample-spot", "marker colour", "mask", bb.DEFAULT_OUT.with_name("spot-vit.safetensors"),
            "make spot-backbone", SPOT_CORRELATION, _write_spot, "test_shift2017/markers.txt",
        ),
    }  # fmt: skip


def student_config(weights: Path, seed: int, **switches) -> StudentConfig:
    """The benchmark student: the stand-in backbone frozen, 4 classes, the given switches."""
    return StudentConfig(
        model=bb.MODEL, weights=str(weights), img_size=bb.IMG_SIZE, model_kwargs=bb.MODEL_KWARGS,
        num_classes=4, seed=seed, **switches,
    )  # fmt: skip


def check_backbone(bench: Benchmark, weights: Path) -> dict:
    """The backbone file against its card: checksum, and the linear probe measured again now
    (shape and cue top-1 on held-out benchmark-like images). Returns both, and whether they agree."""
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    sha = file_sha256(weights)
    model = create_backbone(student_config(weights, 0))
    with torch.random.fork_rng(devices=[]):
        probe = bench.task().probe(
            model, bb.IMG_SIZE, train=800, test=800, seed=card.get("seed", 0)
        )
    recorded = card.get("linear_probe_top1", {})
    agrees = card.get("sha256") == sha and all(
        abs(probe[k] - recorded.get(k, -1.0)) < 0.02 for k in probe
    )
    return {"sha256": sha, "card_sha256": card.get("sha256"), "probe": probe,
            "card_probe": recorded, "agrees": agrees}  # fmt: skip


def extract_entry(dataset: str, teacher: str, split: str, shards: Path, cache: Path) -> str:
    """The cache entry of `teacher` on one split (written once; found afterwards)."""
    from flows.extract_flow import run_extract
    from flows.extract_params import ExtractParams

    params = ExtractParams(
        dataset=dataset, split=split, shards_root=str(shards), cache_root=str(cache),
        teacher=teacher, quant="none", dtype="float32", previews=0, shard_size=1000,
    )  # fmt: skip
    return run_extract(params)["path"]


def load_split(dataset: str, shards: Path, split: str, entry: str | None) -> list[dict]:
    """Every batch of a split, in order, through the student loader (no augmentation)."""
    config = LoaderConfig(
        shard_dir=shards / dataset, cache_entry=entry, split=split, img_size=bb.IMG_SIZE,
        patch_size=bb.MODEL_KWARGS["patch_size"], batch_size=100, train=False, num_workers=0,
        mean=MEAN, std=STD,
    )  # fmt: skip
    return [{k: v for k, v in b.items() if k in (*KEYS, "key")} for b in build_loader(config)]


def prepare(
    bench: Benchmark, root: Path, cache: Path, correlation: float, with_maps: bool
) -> tuple[dict[str, list[dict]], np.ndarray]:
    """Raw data, shards, the correct maps (train, val, test_shift) and every split's batches,
    under root/<bench>/correlation-<level>/ (one copy per level: a calibration run never meets
    another level's files; cache keys follow the shards' content, so one cache serves all);
    and the cue of each test_shift image, in batch order."""
    folder = root / bench.name / f"correlation-{correlation:g}"
    raw, shards = folder / "raw", folder / "shards"
    if not raw.exists():
        bench.write(raw, correlation)
    for split in SPLITS:
        ensure_shards(
            ShardsConfig(dataset=bench.name, split=split, root=raw, shards=shards, shard_size=1000)
        )
    entries = {
        split: extract_entry(bench.name, bench.teacher, split, shards, cache)
        for split in (MAPPED_SPLITS if with_maps else ())
    }
    data = {split: load_split(bench.name, shards, split, entries.get(split)) for split in SPLITS}
    lines = (raw / bench.cue_listing).read_text().splitlines()
    cue_of = {make_key(Path(name).stem): int(cue) for name, cue in (ln.split("\t") for ln in lines)}
    return data, np.array([cue_of[key] for b in data["test_shift"] for key in b["key"]])


def epoch_batches(batches: list[dict], epoch: int, seed: int, size: int) -> list[dict]:
    """The split's samples reshuffled into batches of `size`, the same for every variant."""
    full = {k: torch.cat([b[k] for b in batches]) for k in KEYS if k in batches[0]}
    order = torch.randperm(
        len(full["label"]), generator=torch.Generator().manual_seed(seed * 1000 + epoch)
    )
    return [
        {k: v[order[i : i + size]] for k, v in full.items()} for i in range(0, len(order), size)
    ]
