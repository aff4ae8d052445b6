"""Map-content controls: shuffled maps are a derangement of the same set, uniform maps are flat;
through the loader, against the cache read with plain zarr (tests/test_loader.py's reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loader_fixtures import write_toy_cache, write_toy_split
from test_loader import collect, make_loader, plain_cache_rows, pooled

from student.map_controls import derangement, shuffled_maps, uniform_maps


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_derangement_moves_everyone(n):
    for seed in range(20):
        order = derangement(n, torch.Generator().manual_seed(seed)).tolist()
        assert sorted(order) == list(range(n))
        assert all(order[i] != i for i in range(n))


def test_shuffled_maps_are_a_derangement_of_the_valid_maps():
    maps = torch.arange(8 * 4, dtype=torch.float32).reshape(8, 2, 2)  # all rows distinct
    valid = torch.tensor([True, True, False, True, True, False, True, True])
    out, out_valid = shuffled_maps(maps, valid, torch.Generator().manual_seed(0))
    assert torch.equal(out_valid, valid)
    assert torch.equal(out[~valid], maps[~valid])  # invalid rows untouched
    rows = valid.nonzero().flatten().tolist()
    given = [next(j for j in rows if torch.equal(out[i], maps[j])) for i in rows]
    assert sorted(given) == rows  # the same set of maps
    assert all(g != i for g, i in zip(given, rows, strict=True))  # none keeps its own


def test_a_lone_valid_map_is_dropped_and_uniform_is_flat():
    maps = torch.rand(3, 2, 2)
    valid = torch.tensor([False, True, False])
    out, out_valid = shuffled_maps(maps, valid, torch.Generator().manual_seed(0))
    assert not out_valid.any() and (out == 0).all()
    flat = uniform_maps(maps, valid)
    assert torch.allclose(flat[1], torch.full((2, 2), 0.25)) and torch.equal(flat[0], maps[0])


def test_loader_shuffled_control_deranges_each_batch(tmp_path):
    toy = write_toy_split(tmp_path / "shards", shards=2, per_shard=6)
    entry = write_toy_cache(tmp_path / "cache", toy, commit=2)
    reference = {k: pooled(m) for k, (m, ok) in plain_cache_rows(entry.path).items() if ok}
    loader = make_loader(
        tmp_path / "shards" / "toy", entry.path, batch_size=6, train=False, num_workers=0,
        map_control="shuffled",
    )  # fmt: skip
    for batch in loader:
        keys = [k for k, ok in zip(batch["key"], batch["map_valid"], strict=True) if ok]
        if len(keys) < 2:
            continue
        got = {k: batch["c_vlm"][batch["key"].index(k)].numpy() for k in keys}
        owners = [
            next(o for o in keys if np.allclose(got[k], reference[o], atol=2e-3)) for k in keys
        ]
        assert sorted(owners) == sorted(keys) and all(
            o != k for o, k in zip(owners, keys, strict=True)
        )
    uniform = collect(
        make_loader(tmp_path / "shards" / "toy", entry.path, batch_size=6, train=False,
                    num_workers=0, map_control="uniform")
    )  # fmt: skip
    for sample in uniform.values():
        if sample["map_valid"]:
            assert torch.allclose(sample["c_vlm"], torch.full_like(sample["c_vlm"], 1 / 16))
