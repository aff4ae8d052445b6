"""Which samples a loader yields, and how many batches each rank gets: the FRACTION subset by
key hash, stable seeds, the split folder, and the epoch length DDP needs to agree on."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import webdataset as wds

from pipeline.shards.records import INDEX_FILE, ShardIndex, read_index


def key_hash(key: str, seed: int) -> int:
    """A 64-bit hash of (seed, key): the order in which FRACTION subsets take samples."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def fraction_threshold(index: ShardIndex, fraction: float, seed: int) -> int | None:
    """The largest key hash inside the seeded FRACTION subset (None: every sample).

    The subset is the round(fraction x samples) keys (at least one) with the smallest hashes:
    exactly that many, where a draw per key would vary (1 % of 400 keys gave 2, 8 and 2 samples
    for seeds 0-2). Every epoch, worker and rank agrees on it by comparing a key's hash with
    this one number, and a larger fraction contains every smaller one.
    """
    if fraction >= 1.0:
        return None
    hashes = sorted(key_hash(key, seed) for shard in index.shards for key in shard.keys)
    if not hashes:
        return None
    return hashes[max(1, round(fraction * len(hashes))) - 1]


def in_fraction(key: str, threshold: int | None, seed: int) -> bool:
    """Whether `key` belongs to the subset whose largest hash is `threshold`."""
    return threshold is None or key_hash(key, seed) <= threshold


class FractionFilter:
    """Picklable predicate on raw webdataset samples (workers receive it by pickling)."""

    def __init__(self, threshold: int | None, seed: int) -> None:
        self.threshold, self.seed = threshold, seed

    def __call__(self, sample: dict[str, Any]) -> bool:
        return in_fraction(sample["__key__"], self.threshold, self.seed)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from labelled parts (run seed, epoch, repeat): stable across processes."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def resolve_split_dir(shard_dir: Path, split: str) -> Path:
    """The folder with index.json: `shard_dir/split`, or `shard_dir` if it is that split."""
    for candidate in (shard_dir / split, shard_dir):
        if (candidate / INDEX_FILE).exists():
            index_split = read_index(candidate).split
            if index_split != split:
                raise ValueError(
                    f"{candidate / INDEX_FILE} is split {index_split!r}, not {split!r}"
                )
            return candidate
    raise FileNotFoundError(
        f"no {INDEX_FILE} in {shard_dir / split} or {shard_dir}; write the shards first "
        f"(make shards DATASET=... SPLIT={split})"
    )


def distributed_position() -> tuple[int, int]:
    """(rank, world size) exactly as webdataset's split_by_node will see them."""
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    return rank, world_size


def epoch_length(
    index: ShardIndex,
    batch_size: int,
    train: bool,
    threshold: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Batches one rank yields per epoch.

    Training: every rank yields the same number of full batches (DDP needs equal step counts),
    selected samples // (world_size * batch_size). Evaluation: this rank's shards as its workers
    split them, each worker ending with a partial batch. `threshold`: the FRACTION subset's
    (fraction_threshold).
    """
    if threshold is None:
        counts = [shard.count for shard in index.shards]
    else:
        counts = [
            sum(in_fraction(k, threshold, seed) for k in shard.keys) for shard in index.shards
        ]
    if train:
        return sum(counts) // (world_size * batch_size)
    workers = max(1, num_workers)
    rank_counts = counts[rank::world_size]
    return sum(-(-sum(rank_counts[w::workers]) // batch_size) for w in range(workers))
