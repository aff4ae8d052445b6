"""Shards read back with plain `tarfile` and `webdataset`, checked against the raw dataset."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from pipeline.datasets.adapters import TinyImageNetAdapter
from pipeline.datasets.generated import write_sample_dataset
from pipeline.shards.records import read_index
from pipeline.shards.writer import write_shards


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    return write_sample_dataset(
        tmp_path_factory.mktemp("raw") / "sample", train_per_class=3, val_per_class=2
    )


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes}, straight from the tar members."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def raw_truth(root: Path, split: str) -> dict[str, tuple[bytes, str, list[int]]]:
    """Independent reading of the TinyImageNet files: key -> (bytes, class name, box)."""
    wnids = (root / "wnids.txt").read_text().split()
    names = {
        line.split("\t")[0]: line.split("\t")[1].split(",")[0]
        for line in (root / "words.txt").read_text().splitlines()
    }
    truth = {}
    if split == "train":
        for wnid in wnids:
            for line in (root / "train" / wnid / f"{wnid}_boxes.txt").read_text().splitlines():
                name, *box = line.split()
                path = root / "train" / wnid / "images" / name
                truth[Path(name).stem] = (path.read_bytes(), names[wnid], [int(b) for b in box])
    else:
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            name, wnid, *box = line.split()
            path = root / "val" / "images" / name
            truth[Path(name).stem] = (path.read_bytes(), names[wnid], [int(b) for b in box])
    return truth


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_sample_matches_the_raw_dataset(
    sample_root: Path, tmp_path: Path, split: str
) -> None:
    result = TinyImageNetAdapter(sample_root, split).load()
    outcome = write_shards(result, tmp_path, "sample", split, shard_size=7, progress=False)
    index = json.loads((tmp_path / "index.json").read_text())
    truth = raw_truth(sample_root, split)
    classes = index["classes"]

    seen = {}
    for shard in index["shards"]:
        seen.update(read_tar(tmp_path / shard["name"]))
    assert sorted(seen) == sorted(truth)
    for key, members in seen.items():
        data, class_name, box = truth[key]
        record = json.loads(members["json"])
        assert members["jpg"] == data  # the original bytes, untouched
        assert record["class_name"] == class_name == classes[record["label"]]
        assert record["boxes"] == [box]
        assert (record["width"], record["height"]) == (64, 64)
    assert outcome.index.num_samples == len(truth)


def test_shards_have_fixed_size_and_plain_webdataset_reads_them(
    sample_root: Path, tmp_path: Path
) -> None:
    result = TinyImageNetAdapter(sample_root, "train").load()
    write_shards(result, tmp_path, "sample", "train", shard_size=7, progress=False)
    index = read_index(tmp_path)
    counts = [s.count for s in index.shards]
    assert counts == [7, 7, 7, 7, 2]  # 30 samples
    urls = [str(tmp_path / s.name) for s in index.shards]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert keys == [k for s in index.shards for k in s.keys]
    assert all("." not in k for k in keys)
    assert index.fingerprint == index.compute_fingerprint()


def test_rerun_with_same_inputs_does_nothing(sample_root: Path, tmp_path: Path) -> None:
    result = TinyImageNetAdapter(sample_root, "val").load()
    first = write_shards(result, tmp_path, "sample", "val", shard_size=7, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    second = write_shards(
        TinyImageNetAdapter(sample_root, "val").load(),
        tmp_path,
        "sample",
        "val",
        shard_size=7,
        progress=False,
    )
    assert second.up_to_date and not first.up_to_date
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    assert second.index.fingerprint == first.index.fingerprint


def test_interrupted_write_leaves_no_index_and_rerun_completes(
    sample_root: Path, tmp_path: Path, monkeypatch
) -> None:
    result = TinyImageNetAdapter(sample_root, "train").load()
    reference = write_shards(
        result, tmp_path / "ref", "sample", "train", shard_size=7, progress=False
    )

    calls = {"n": 0}
    original = wds.TarWriter.write

    def dying_write(self, sample):
        calls["n"] += 1
        if calls["n"] == 10:  # in the middle of the second shard
            raise KeyboardInterrupt("killed")
        return original(self, sample)

    monkeypatch.setattr(wds.TarWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        write_shards(result, tmp_path / "out", "sample", "train", shard_size=7, progress=False)
    assert not (tmp_path / "out" / "index.json").exists()  # readers see no dataset, not half of one
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*.tar")) == ["shard-000000.tar"]
    monkeypatch.setattr(wds.TarWriter, "write", original)

    redone = write_shards(result, tmp_path / "out", "sample", "train", shard_size=7, progress=False)
    assert redone.index.fingerprint == reference.index.fingerprint
    assert not list((tmp_path / "out").glob("*.partial"))
    for shard in reference.index.shards:
        assert (tmp_path / "out" / shard.name).read_bytes() == (
            tmp_path / "ref" / shard.name
        ).read_bytes()


def test_sample_dataset_is_deterministic(tmp_path: Path) -> None:
    a = write_sample_dataset(tmp_path / "a", train_per_class=2, val_per_class=1, seed=3)
    b = write_sample_dataset(tmp_path / "b", train_per_class=2, val_per_class=1, seed=3)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def test_sample_boxes_enclose_the_object(sample_root: Path) -> None:
    """The object's color dominates inside its box and is rare outside (boxes are true)."""
    import numpy as np
    from PIL import Image

    from pipeline.datasets.generated import SHAPES

    for key, (data, class_name, box) in raw_truth(sample_root, "train").items():
        label = next(i for i, s in enumerate(SHAPES) if s[0] == class_name)
        if SHAPES[label][0] == "ring":
            continue  # hollow: the center is background on purpose
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
        distance = np.abs(pixels - np.array(SHAPES[label][2])).sum(-1)
        near = distance < 110
        x0, y0, x1, y1 = box
        inside = near[y0:y1, x0:x1].mean()
        outside = (near.sum() - near[y0:y1, x0:x1].sum()) / (near.size - (x1 - x0) * (y1 - y0))
        assert inside > 0.3 and inside > 3 * outside, key


def _write_in_process(root: str, out: str) -> str:
    result = TinyImageNetAdapter(Path(root), "train").load()
    return write_shards(
        result, Path(out), "sample", "train", shard_size=7, progress=False
    ).index.fingerprint


def test_two_writers_at_once_agree_and_leave_whole_shards(
    sample_root: Path, tmp_path: Path
) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        prints = pool.starmap(_write_in_process, [(str(sample_root), str(tmp_path))] * 2)
    assert prints[0] == prints[1] == read_index(tmp_path).fingerprint
    for shard in read_index(tmp_path).shards:  # every listed shard is whole and matches its hash
        assert (
            sum(
                1
                for _ in wds.WebDataset(
                    str(tmp_path / shard.name), shardshuffle=False, empty_check=False
                )
            )
            == shard.count
        )
        assert hashlib.sha256((tmp_path / shard.name).read_bytes()).hexdigest() == shard.sha256
    assert not list(tmp_path.glob("*.partial"))
