"""What the integrity checks cost (issue 22), each arm measured side by side in one run.

- extraction, per 1000-image shard, without the teacher's own work (it only adds the same time
  to both arms, so this is the worst case): read the shard and write its maps into an entry
  without checksums, against: sha256 of the shard against index.json, read it, write its maps
  with crc32c on every chunk;
- loader, one pass over the split: maps read plainly from an entry without checksums, against
  maps read with crc32c verified and every row checked (student/loader.py as it runs);
- the training flow's once-per-run check (every shard's sha256 + every committed map chunk),
  against one loader pass.

Repetitions alternate the arms' order, so machine load hits both alike. On a shared machine a
whole arm's time swings by more than the checks cost, so the parts that differ (shard sha256,
the map write with and without crc32c, the per-shard map read with and without the checks) are
also timed alone, many times, and the overheads in the RESULT line are those parts' added time
over the arm's median time without the checks; the whole arms' ratios are printed above it.

    python -m bench.integrity                 # synthetic sample shards (64x64 JPEGs) in a temp dir

Ends with one line `RESULT extract_overhead=<added / extract time> loader_overhead=<added / pass
time> preflight_per_epoch=<check seconds / pass seconds> sha256_mb_per_s=<...>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from zarr.codecs import ZstdCodec

import pipeline.cache.manifest
import student.loader
from bench.loader import synthetic_inputs
from pipeline.cache import CacheEntry, CacheSpec, ShardMaps, open_entry
from pipeline.cache.integrity import require_sound_entry
from pipeline.io import file_sha256
from pipeline.shards.integrity import check_shard_files
from pipeline.shards.reader import iter_shard
from pipeline.shards.records import read_index
from student.loader import LoaderConfig, build_loader


def plain_read(entry: CacheEntry, shard_name: str):
    """The loader's read before the checks: the three arrays, no row checks."""
    return entry.read_shard(shard_name, fields=("key", "c_vlm", "valid")), None


def median_ratio(with_s: list[float], without_s: list[float]) -> float:
    return statistics.median(w / o for w, o in zip(with_s, without_s, strict=True))


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        work = Path(tmp)
        split_dir, checked_path = synthetic_inputs(work, args.images, args.shard_size)
        index = read_index(split_dir)
        checked = open_entry(checked_path, index=index)
        original = pipeline.cache.manifest.chunk_compressors
        pipeline.cache.manifest.chunk_compressors = lambda: (ZstdCodec(level=0, checksum=False),)
        try:
            spec = CacheSpec.model_validate(
                {**checked.manifest["spec"], "teacher": {"model": "bench-box-maps-legacy"}}
            )
            legacy = CacheEntry.create_or_open(
                str(work / "cache"), spec, index, checked.grid, checked.manifest["geometry"]
            )
        finally:
            pipeline.cache.manifest.chunk_compressors = original
        maps = {s.name: checked.read_shard(s.name) for s in index.shards}
        for name, rows in maps.items():
            legacy.write_shard(name, rows)

        shard = index.shards[0]
        shard_path = split_dir / shard.name
        size_mb = shard_path.stat().st_size / 1e6

        def extract(entry: CacheEntry, verify: bool) -> None:
            entry.uncommit_shard(shard.name)
            if verify:
                check_shard_files(split_dir, index, [shard.name])
            samples = list(iter_shard(shard_path))
            assert len(samples) == shard.count
            entry.write_shard(shard.name, ShardMaps(**vars(maps[shard.name])))

        def loader(entry: CacheEntry):
            return build_loader(LoaderConfig(shard_dir=split_dir, split="train", cache_entry=entry.path, img_size=args.img_size, patch_size=16, batch_size=64, train=False, num_workers=0, mean=(0.5,) * 3, std=(0.5,) * 3))  # fmt: skip

        loaders = {"with": loader(checked), "without": loader(legacy)}

        def one_pass(arm: str) -> None:
            # the loader's read, as it is (with) or as it was before the checks (without)
            student.loader.check_shard = (
                checked_read if arm == "with" else plain_read  # type: ignore[assignment]
            )
            seen = sum(len(batch["key"]) for batch in loaders[arm])
            assert seen == index.num_samples

        checked_read = student.loader.check_shard
        one_pass("with")  # warm-up: page cache, imports, codecs
        arms = ("with", "without")
        times: dict[str, dict[str, list[float]]] = {
            part: {arm: [] for arm in arms} for part in ("extract", "write", "read", "loader")
        }
        sha_s, preflight_s = [], []
        for rep in range(args.reps):
            for arm in arms if rep % 2 == 0 else arms[::-1]:
                entry = checked if arm == "with" else legacy
                read = checked_read if arm == "with" else plain_read
                times["extract"][arm].append(timed(lambda e=entry, a=arm: extract(e, a == "with")))
                times["loader"][arm].append(timed(lambda a=arm: one_pass(a)))
                # The parts that differ, alone: many short repetitions average the load out.
                for _ in range(5):
                    entry.uncommit_shard(shard.name)
                    rows = ShardMaps(**vars(maps[shard.name]))
                    times["write"][arm].append(
                        timed(lambda e=entry, r=rows: e.write_shard(shard.name, r))
                    )
                    times["read"][arm].append(timed(lambda e=entry, r=read: r(e, shard.name)))
            sha_s.append(timed(lambda: file_sha256(shard_path)))
            preflight_s.append(
                timed(
                    lambda: (
                        check_shard_files(split_dir, index),
                        require_sound_entry(checked, index),
                    )
                )
            )
        student.loader.check_shard = checked_read

    med = {
        part: {arm: statistics.median(v) for arm, v in arms_.items()}
        for part, arms_ in times.items()
    }
    for part, by_arm in times.items():
        for arm, values in by_arm.items():
            print(
                f"{part:8s} {arm:8s} median {statistics.median(values) * 1e3:9.2f} ms "
                f"(best {min(values) * 1e3:9.2f} ms, {len(values)} reps)"
            )
    sha = statistics.median(sha_s)
    preflight = statistics.median(preflight_s)
    shards = len(index.shards)
    # What the checks add, from the isolated parts, over the arm's whole time without them.
    extract_added = sha + med["write"]["with"] - med["write"]["without"]
    loader_added = shards * (med["read"]["with"] - med["read"]["without"])
    print(f"shard     {shard.count} images, {size_mb:.2f} MB; sha256 {sha * 1e3:.1f} ms")
    print(
        f"extract   the checks add {extract_added * 1e3:.1f} ms a shard (sha256 + crc32c on "
        f"write) to {med['extract']['without'] * 1e3:.0f} ms of read + write without a "
        f"teacher; whole arms side by side: with/without = "
        f"{median_ratio(times['extract']['with'], times['extract']['without']):.3f}"
    )
    print(
        f"loader    the checks add {loader_added * 1e3:.1f} ms a pass ({shards} shard reads with "
        f"crc32c + row checks) to {med['loader']['without']:.3f} s; whole passes side by side: "
        f"with/without = {median_ratio(times['loader']['with'], times['loader']['without']):.3f}"
    )
    print(
        f"preflight {shards} shards' sha256 + every committed map chunk: {preflight:.3f} s, "
        f"against {med['loader']['with']:.3f} s for one loader pass over the split"
    )
    print(
        f"RESULT extract_overhead={extract_added / med['extract']['without']:.4f} "
        f"loader_overhead={loader_added / med['loader']['without']:.4f} "
        f"preflight_per_epoch={preflight / med['loader']['with']:.4f} "
        f"sha256_mb_per_s={size_mb / sha:.0f}"
    )


if __name__ == "__main__":
    main()
