"""`python -m pipeline ...`: the command line that the Makefile calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cache.cli import add_cache_commands
from pipeline.datasets.generated import write_sample_dataset
from pipeline.datasets.registry import load_registry
from pipeline.errors import UserError
from pipeline.paths import shards_root
from pipeline.shards.config import DEFAULT_SHARD_SIZE, ShardsConfig


def _datasets(_: argparse.Namespace) -> int:
    for entry in load_registry().values():
        state = "present" if entry.default_root().exists() else "missing"
        print(f"{entry.name:14s} {entry.adapter:13s} {state:8s} {entry.default_root()}")
        print(f"{'':14s} splits: {', '.join(entry.splits)}; obtain: {entry.obtain}")
    return 0


def _shards(args: argparse.Namespace) -> int:
    from pipeline.shards.build import build_shards, summarize

    config = ShardsConfig(
        dataset=args.dataset,
        split=args.split,
        root=args.root,
        shards=args.out,
        shard_size=args.shard_size,
    )
    print(summarize(build_shards(config)))
    return 0


def _sample_data(args: argparse.Namespace) -> int:
    root = write_sample_dataset(args.out, seed=args.seed)
    print(f"sample dataset written to {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    datasets = commands.add_parser("datasets", help="list registered datasets and where they lie")
    datasets.set_defaults(func=_datasets)

    shards = commands.add_parser("shards", help="write a dataset split as WebDataset shards")
    shards.add_argument("--dataset", default="sample")
    shards.add_argument("--split", default="train")
    shards.add_argument("--root", type=Path, default=None, help="raw dataset folder")
    shards.add_argument("--out", type=Path, default=shards_root(), help="shards root")
    shards.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    shards.set_defaults(func=_shards)

    sample = commands.add_parser("sample-data", help="generate the offline sample dataset")
    sample.add_argument("--out", type=Path, required=True)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_sample_data)

    add_cache_commands(commands)  # the cache commands live beside the cache
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:  # the user's to fix: one line; anything else is a bug
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
