"""Bad raw input never stops a shard run and never loses the good samples; every skip says why."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.datasets.adapters import TinyImageNetAdapter
from pipeline.datasets.registry import DatasetMissingError, open_adapter
from pipeline.shards.writer import write_shards


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture()
def messy_root(tmp_path: Path) -> Path:
    """A TinyImageNet layout with one of every kind of bad input, next to good images."""
    root = tmp_path / "messy"
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    good = _encode(rgb, "JPEG")
    files = {
        "a_good.JPEG": (good, "1 1 10 10"),
        "a_truncated.JPEG": (good[: len(good) // 2], "1 1 10 10"),
        "a_empty.JPEG": (b"", "1 1 10 10"),
        "a_text.JPEG": (b"this is not an image\n", "1 1 10 10"),
        "a_gray.JPEG": (_encode(rgb.convert("L"), "PNG"), "1 1 10 10"),
        "a_palette.JPEG": (_encode(rgb.convert("P"), "PNG"), "1 1 10 10"),
        "a_alpha.JPEG": (_encode(rgb.convert("RGBA"), "PNG"), "1 1 10 10"),
        "a_cmyk.JPEG": (_encode(rgb.convert("CMYK"), "JPEG"), "1 1 10 10"),
        "a_boxout.JPEG": (good, "-5 2 100 20"),
        "a_boxzero.JPEG": (good, "5 5 5 20"),
    }
    (root / "train" / "n1" / "images").mkdir(parents=True)
    (root / "train" / "n2" / "images").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("n1\nn2\n")
    (root / "words.txt").write_text("n1\tapple, fruit\nn2\tboat\n")
    lines = []
    for name, (data, box) in files.items():
        (root / "train" / "n1" / "images" / name).write_bytes(data)
        lines.append(f"{name} {box}\n")
    (root / "train" / "n1" / "n1_boxes.txt").write_text("".join(lines))
    # class n2 has no box file at all: its images stay, without boxes
    (root / "train" / "n2" / "images" / "b_good.JPEG").write_bytes(good)
    # val has images but no val_annotations.txt
    (root / "val" / "images" / "val_0.JPEG").write_bytes(good)
    return root


def _shard_records(out: Path) -> dict[str, tuple[dict, dict]]:
    records = {}
    index = json.loads((out / "index.json").read_text())
    for shard in index["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            key, ext = name.split(".", 1)
            records.setdefault(key, {})[ext] = data
    return {k: (json.loads(v.pop("json")), v) for k, v in records.items()}


def test_bad_samples_are_repaired_or_skipped_with_reasons(messy_root: Path, tmp_path: Path) -> None:
    result = TinyImageNetAdapter(messy_root, "train").load()
    out = tmp_path / "shards"
    outcome = write_shards(
        result, out, "messy", "train", shard_size=4, root=messy_root, progress=False
    )
    index = json.loads((out / "index.json").read_text())

    skipped = {Path(s["source"]).name: s["reason"] for s in index["skipped"]}
    assert set(skipped) == {"a_truncated.JPEG", "a_empty.JPEG", "a_text.JPEG"}
    assert "truncated" in skipped["a_truncated.JPEG"] or "corrupt" in skipped["a_truncated.JPEG"]
    assert skipped["a_empty.JPEG"] == "zero-byte file"
    assert "not an image" in skipped["a_text.JPEG"]

    records = _shard_records(out)
    assert set(records) == {
        "a_good",
        "a_gray",
        "a_palette",
        "a_alpha",
        "a_cmyk",
        "a_boxout",
        "a_boxzero",
        "b_good",
    }
    for key in ("a_gray", "a_palette", "a_alpha", "a_cmyk"):
        record, members = records[key]
        source = Image.open(messy_root / "train" / "n1" / "images" / f"{key}.JPEG")
        stored = Image.open(io.BytesIO(members["png"]))
        assert stored.mode == "RGB"
        assert np.array_equal(np.asarray(stored), np.asarray(source.convert("RGB")))
        assert any("converted mode" in r for r in record["repairs"])
    assert records["a_good"][1]["jpg"] == (messy_root / "train/n1/images/a_good.JPEG").read_bytes()
    assert records["a_boxout"][0]["boxes"] == [[0.0, 2.0, 40.0, 20.0]]  # clipped to 40x32
    assert records["a_boxzero"][0]["boxes"] == []  # zero width: dropped, sample kept
    assert (
        records["b_good"][0]["boxes"] == [] and "no box file" in records["b_good"][0]["repairs"][0]
    )
    assert {Path(r["source"]).name for r in index["repaired"]} >= {
        "a_gray.JPEG",
        "a_boxout.JPEG",
        "a_boxzero.JPEG",
    }
    assert outcome.index.num_samples == 8


def test_missing_annotation_file_skips_its_samples_with_reason(
    messy_root: Path, tmp_path: Path
) -> None:
    result = TinyImageNetAdapter(messy_root, "val").load()
    outcome = write_shards(result, tmp_path, "messy", "val", shard_size=4, progress=False)
    assert outcome.index.num_samples == 0
    assert [s.reason for s in outcome.index.skipped] == [
        f"no label: {messy_root / 'val' / 'val_annotations.txt'} is missing"
    ]


def test_summary_lists_skips(messy_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LFI_DATA_DIR", str(tmp_path))
    code = main(
        [
            "shards",
            "--dataset",
            "tinyimagenet",
            "--root",
            str(messy_root),
            "--out",
            str(tmp_path / "s"),
            "--shard-size",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped    3" in out and "zero-byte file" in out and "a_text.JPEG" in out


def test_missing_dataset_folder_says_where_and_how(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LFI_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetMissingError) as error:
        open_adapter("tinyimagenet", "train")
    message = str(error.value)
    assert str(tmp_path / "raw" / "tiny-imagenet-200") in message
    assert "tiny-imagenet-200.zip" in message and "ROOT=" in message
    assert main(["shards", "--dataset", "pacs", "--split", "photo"]) == 2
    assert "DomainBed" in capsys.readouterr().err


def test_unknown_dataset_lists_registered_ones(capsys) -> None:
    assert main(["shards", "--dataset", "nope"]) == 2
    assert "tinyimagenet" in capsys.readouterr().err
