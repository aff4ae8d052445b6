"""The shard + map loader: every sample gets its own map, checked against the cache read with
plain `zarr` and `json` (no project code on the reference side), across several workers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from loader_fixtures import is_invalid_row, write_toy_cache, write_toy_split

from pipeline.cache import CacheMismatchError
from student.loader import LoaderConfig, build_loader

torch.set_num_threads(1)

IMG, PATCH = 16, 4  # student grid 4x4; teacher grid 8x8 -> each student cell is 2x2 teacher cells
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def make_loader(shard_dir, cache_entry, *, batch_size, train, num_workers, **options):
    """The loader under test on the train split at IMG/PATCH, plain normalisation unless given."""
    config = {"split": "train", "img_size": IMG, "patch_size": PATCH, **PLAIN, **options}
    return build_loader(
        LoaderConfig(
            shard_dir=shard_dir, cache_entry=cache_entry, batch_size=batch_size, train=train,
            num_workers=num_workers, **config,
        )
    )  # fmt: skip


def plain_cache_rows(entry_path: str) -> dict[str, tuple[np.ndarray, bool]]:
    """key -> (c_vlm, valid) of committed shards, with json + zarr only."""
    entry = Path(entry_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    group = zarr.open_group(str(entry / "maps.zarr"), mode="r")
    committed = {p.name.removesuffix(".json") for p in (entry / "commits").glob("*.json")}
    rows = {}
    for shard in manifest["shards"]:
        if shard["name"] not in committed:
            continue
        start, stop = shard["row_offset"], shard["row_offset"] + shard["count"]
        for key, c_vlm, valid in zip(
            group["key"][start:stop],
            group["c_vlm"][start:stop],
            group["valid"][start:stop],
            strict=True,
        ):
            rows[str(key)] = (np.asarray(c_vlm, np.float32), bool(valid))
    return rows


def pooled(teacher_map: np.ndarray) -> np.ndarray:
    """8x8 -> 4x4 by summing 2x2 blocks, renormalized."""
    out = teacher_map.reshape(4, 2, 4, 2).sum(axis=(1, 3))
    return out / out.sum()


def collect(loader) -> dict[str, dict]:
    """key -> that sample's slice of its batch; fails on a key seen twice."""
    seen: dict[str, dict] = {}
    for batch in loader:
        for i, key in enumerate(batch["key"]):
            assert key not in seen, f"{key} delivered twice"
            seen[key] = {name: batch[name][i] for name in batch}
    return seen


@pytest.fixture
def toy(tmp_path):
    return write_toy_split(tmp_path / "shards", shards=4, per_shard=6)


def test_every_sample_gets_its_own_map_across_workers(tmp_path, toy, caplog):
    entry = write_toy_cache(tmp_path / "cache", toy, commit=3)  # the 4th shard stays pending
    loader = make_loader(
        tmp_path / "shards" / "toy", entry.path, batch_size=4, train=False, num_workers=2
    )
    assert "1 of 4 shards have no committed maps" in caplog.text  # said once, at build time
    seen = collect(loader)
    reference = plain_cache_rows(entry.path)

    assert sorted(seen) == sorted(toy.keys)
    pending = set(toy.index.shards[3].keys)
    for key, sample in seen.items():
        assert sample["label"].item() == toy.labels[key]
        if key in pending:
            assert key not in reference
            assert not sample["map_valid"] and (sample["c_vlm"] == 0).all()
            continue
        teacher_map, valid = reference[key]
        assert valid == (not is_invalid_row(key))
        assert bool(sample["map_valid"]) == valid
        if valid:
            # float16 storage: compare at its precision
            np.testing.assert_allclose(sample["c_vlm"].numpy(), pooled(teacher_map), atol=2e-3)
            assert sample["c_vlm"].sum().item() == pytest.approx(1.0, abs=1e-5)
        else:
            assert (sample["c_vlm"] == 0).all()
    assert sum(not s["map_valid"] for s in seen.values()) >= len(pending)


def test_padded_teacher_view_on_wide_images_reaches_the_right_pixels(tmp_path):
    # 48x32 images; the teacher padded them to a 48 px square (8 px above and below) and its
    # 8x8 grid has 6 px cells. The eval view is the centered 32x32 square (x 8..40).
    toy = write_toy_split(tmp_path / "shards", shards=2, per_shard=4, width=48, height=32)
    entry = write_toy_cache(tmp_path / "cache", toy, geometry={"mode": "pad", "size": 48})
    loader = make_loader(toy.split_dir, entry.path, batch_size=4, train=False, num_workers=0)
    seen = collect(loader)
    reference = plain_cache_rows(entry.path)
    for key, sample in seen.items():
        teacher_map, valid = reference[key]
        if not valid:
            continue
        # rasterize over the 48x48 padded view, keep original rows 0..32 (view rows 8..40)
        # and columns 8..40, then sum 8x8 pixel blocks into the 4x4 student grid
        density = np.kron(teacher_map, np.ones((6, 6))) / 36.0  # [48, 48] view pixels
        kept = density[8:40, 8:40].reshape(4, 8, 4, 8).sum(axis=(1, 3))
        np.testing.assert_allclose(sample["c_vlm"].numpy(), kept / kept.sum(), atol=2e-3)
        assert sample["map_valid"]


def test_batch_format(tmp_path, toy):
    entry = write_toy_cache(tmp_path / "cache", toy)
    loader = make_loader(
        toy.split_dir,
        entry.path,
        batch_size=5,
        train=False,
        num_workers=0,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (5, 3, IMG, IMG) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["label"].shape == (5,)
    assert batch["c_vlm"].shape == (5, 4, 4) and batch["c_vlm"].dtype == torch.float32
    assert batch["map_valid"].dtype == torch.bool
    assert len(batch["key"]) == 5
    assert set(batch["domain"]) <= {"photo", "sketch"}
    # the right half of every toy image is black: (0 - 0.5) / 0.25 = -2 after normalization
    assert torch.allclose(batch["image"][..., IMG // 2 + 1 :], torch.tensor(-2.0))


def test_training_flip_moves_map_and_image_together(tmp_path, toy):
    entry = write_toy_cache(tmp_path / "cache", toy)
    reference = plain_cache_rows(entry.path)
    loader = make_loader(
        toy.split_dir,
        entry.path,
        batch_size=4,
        train=True,
        num_workers=2,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
    )
    flips = Counter()
    batches = 0
    for batch in loader:
        batches += 1
        assert len(batch["key"]) == 4  # training batches are always full
        for i, key in enumerate(batch["key"]):
            image = batch["image"][i]
            flipped = image[..., : IMG // 2].mean() < image[..., IMG // 2 :].mean()
            flips[bool(flipped)] += 1
            teacher_map, valid = reference[key]
            if not valid:
                assert not batch["map_valid"][i]
                continue
            expected = pooled(teacher_map)[:, ::-1] if flipped else pooled(teacher_map)
            np.testing.assert_allclose(batch["c_vlm"][i].numpy(), expected, atol=2e-3)
    assert batches == len(loader) == 24 // 4
    assert flips[True] and flips[False]


def test_training_epochs_reshuffle_and_set_epoch_is_deterministic(tmp_path, toy):
    def keys_of(epoch: int) -> list[str]:
        loader = make_loader(toy.split_dir, None, batch_size=4, train=True, num_workers=0)
        loader.set_epoch(epoch)
        return [k for batch in loader for k in batch["key"]]

    first, again, other = keys_of(0), keys_of(0), keys_of(1)
    assert first == again
    assert first != other
    assert sorted(first) == sorted(other) == sorted(toy.keys)


def test_training_views_depend_on_seed_epoch_and_key_only(tmp_path, toy):
    """The same crops and flips with 0 or 2 workers and whatever the global RNG holds (a run
    must reproduce from its seed); another epoch draws other views."""

    def views(epoch: int, num_workers: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        loader = make_loader(toy.split_dir, None, batch_size=4, train=True, num_workers=num_workers)
        loader.set_epoch(epoch)
        return {k: img for b in loader for k, img in zip(b["key"], b["image"], strict=True)}

    first = views(0, num_workers=0, global_seed=1)
    for again in (views(0, num_workers=0, global_seed=2), views(0, num_workers=2, global_seed=3)):
        assert again.keys() == first.keys()
        assert all(torch.equal(again[k], first[k]) for k in first)
    other = views(1, num_workers=0, global_seed=1)
    assert sum(not torch.equal(other[k], first[k]) for k in first) > len(first) // 2


def test_without_cache_maps_are_absent_not_invented(tmp_path, toy):
    loader = make_loader(toy.split_dir, None, batch_size=6, train=False, num_workers=0)
    for batch in loader:
        assert not batch["map_valid"].any()
        assert (batch["c_vlm"] == 0).all()


def test_refuses_cache_built_from_other_shards(tmp_path, toy):
    other = write_toy_split(tmp_path / "other", shards=4, per_shard=6, key_prefix="x")
    entry = write_toy_cache(tmp_path / "cache", other)
    with pytest.raises(CacheMismatchError, match=toy.index.fingerprint):
        make_loader(toy.split_dir, entry.path, batch_size=4, train=False, num_workers=0)


def test_fraction_is_a_fixed_seeded_nested_subset(tmp_path):
    toy = write_toy_split(tmp_path / "shards", shards=4, per_shard=50)

    def keys(fraction: float, seed: int, train: bool = False, workers: int = 0) -> list[str]:
        loader = make_loader(
            toy.split_dir,
            None,
            batch_size=8,
            train=train,
            num_workers=workers,
            fraction=fraction,
            seed=seed,
        )
        got = [k for batch in loader for k in batch["key"]]
        assert len(got) == (len(loader) * 8 if train else len(set(got)))
        return got

    tenth, half = set(keys(0.1, 0)), set(keys(0.5, 0))
    assert len(tenth) == 20 and len(half) == 100  # exactly that share of the 200 keys
    assert len(set(keys(0.01, 0))) == len(set(keys(0.01, 1))) == 2  # every seed: 1 % is 2
    assert len(set(keys(0.001, 0))) == 1  # never empty
    assert tenth < half  # a larger fraction contains the smaller one
    assert set(keys(0.5, 0, workers=2)) == half  # workers agree on the subset
    assert set(keys(0.5, 1)) != half  # the seed picks another subset
    trained = keys(0.5, 0, train=True)
    assert set(trained) <= half  # training never leaves the subset
    assert len(trained) == len(half) // 8 * 8


def test_eval_length_counts_partial_batches_per_worker(tmp_path):
    toy = write_toy_split(tmp_path / "shards", shards=3, per_shard=5)
    loader = make_loader(toy.split_dir, None, batch_size=4, train=False, num_workers=2)
    sizes = [len(batch["key"]) for batch in loader]
    # worker 0 reads shards 0 and 2 (10 samples: 4+4+2), worker 1 shard 1 (5: 4+1)
    assert sorted(sizes) == [1, 2, 4, 4, 4]
    assert len(loader) == len(sizes)


def test_split_folder_and_errors(tmp_path, toy):
    # the split folder itself works too
    loader = make_loader(toy.split_dir, None, batch_size=4, train=False, num_workers=0)
    assert len(loader) == 6
    with pytest.raises(ValueError, match="not 'val'"):
        make_loader(toy.split_dir, None, split="val", batch_size=4, train=False, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"index\.json"):
        make_loader(tmp_path / "nowhere", None, batch_size=4, train=False, num_workers=0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        make_loader(toy.split_dir, None, img_size=18, batch_size=4, train=False, num_workers=0)


def test_image_size_disagreeing_with_record_is_named(tmp_path):
    import webdataset as wds
    from loader_fixtures import toy_image

    toy = write_toy_split(tmp_path / "shards", shards=1, per_shard=2)
    shard = toy.split_dir / toy.index.shards[0].name
    with wds.TarWriter(str(shard)) as sink:  # same keys, but the record lies about the size
        for key in toy.keys:
            record = {"label": 0, "class_name": "c", "width": 99, "height": 32, "source": "x"}
            sink.write({"__key__": key, "png": toy_image(key), "json": json.dumps(record)})
    loader = make_loader(toy.split_dir, None, batch_size=2, train=False, num_workers=0)
    with pytest.raises(ValueError, match=f"{toy.keys[0]}.*record says"):
        next(iter(loader))
