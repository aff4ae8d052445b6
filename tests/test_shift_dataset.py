"""sample-shift: train keeps the class-background correlation, test_shift breaks it. The
background is measured from the pixels outside the shape's box, not taken from the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets.registry import get_entry, open_adapter
from pipeline.datasets.shift import BACKGROUNDS, write_shift_dataset


@pytest.fixture(scope="module")
def shift_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shift")
    return write_shift_dataset(
        root, per_class={"train": 40, "val": 5, "test_shift": 40, "train_indep": 5}
    )


def measured_background(path: Path, box: tuple[float, float, float, float]) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    outside = np.ones(pixels.shape[:2], dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    outside[y0:y1, x0:x1] = False
    mean = pixels[outside].mean(axis=0)
    palette = np.array([rgb for _, rgb in BACKGROUNDS], dtype=float)
    return int(np.argmin(((palette - mean) ** 2).sum(axis=1)))


def pairs(root: Path, split: str) -> list[tuple[int, int]]:
    adapter, _ = open_adapter("sample-shift", split, root)
    result = adapter.load()
    assert result.classes == ["circle", "square", "triangle", "cross"]
    return [(s.label, measured_background(s.path, s.boxes[0])) for s in result.samples]


def test_train_keeps_the_correlation_and_test_shift_breaks_it(shift_root: Path) -> None:
    train, shifted = pairs(shift_root, "train"), pairs(shift_root, "test_shift")
    assert len(train) == len(shifted) == 160
    agree_train = np.mean([label == bg for label, bg in train])
    agree_shift = np.mean([label == bg for label, bg in shifted])
    # Expected CORRELATION (0.99) and 0.25 (chance with 4 backgrounds); 160 draws: std about
    # 0.01 and 0.034.
    assert agree_train > 0.8
    assert agree_shift < 0.4
    # Independence: every class meets every background in the shifted split.
    table = np.zeros((4, 4), dtype=int)
    for label, bg in shifted:
        table[label, bg] += 1
    assert (table > 0).all(), table


def test_audit_file_matches_the_pixels(shift_root: Path) -> None:
    adapter, _ = open_adapter("sample-shift", "test_shift", shift_root)
    written = dict(
        line.split("\t")
        for line in (shift_root / "test_shift" / "backgrounds.txt").read_text().splitlines()
    )
    for sample in adapter.load().samples[:40]:
        assert int(written[sample.path.name]) == measured_background(sample.path, sample.boxes[0])


def test_registry_entry_lists_the_shifted_split(shift_root: Path) -> None:
    entry = get_entry("sample-shift")
    assert entry.generated and "test_shift" in entry.splits
    adapter, _ = open_adapter("sample-shift", "val", shift_root)
    assert adapter.splits() == ["train", "val", "test_shift", "train_indep"]


def test_correlation_is_a_parameter(tmp_path: Path) -> None:
    sizes = {"train": 10, "val": 2, "test_shift": 2, "train_indep": 2}
    root = write_shift_dataset(tmp_path / "c1", per_class=sizes, correlation=1.0)
    assert all(label == bg for label, bg in pairs(root, "train"))  # no exception at all
    with pytest.raises(ValueError, match="correlation"):
        write_shift_dataset(tmp_path / "bad", per_class=sizes, correlation=1.5)


def test_a_default_folder_from_older_settings_is_refused(tmp_path, monkeypatch) -> None:
    """`data/raw/sample-shift` written at another correlation (or before the settings were
    recorded) is refused with how to regenerate, not silently used for the benchmark."""
    import json

    from pipeline.datasets import registry
    from pipeline.errors import BadInputDataError

    stale = tmp_path / "sample-shift"
    entry = get_entry("sample-shift")
    monkeypatch.setattr(type(entry), "default_root", lambda self: stale)
    stale.mkdir()
    with pytest.raises(BadInputDataError, match=r"no readable GENERATOR\.json"):
        registry.open_adapter("sample-shift", "train")
    (stale / "GENERATOR.json").write_text(json.dumps({"correlation": 0.9, "seed": 0}))
    with pytest.raises(BadInputDataError, match=r"'correlation': 0\.9.*delete it"):
        registry.open_adapter("sample-shift", "train")
    from pipeline.datasets.shift import check_shift_dataset

    check_shift_dataset(write_shift_dataset(tmp_path / "fresh"))  # this code's own: accepted
