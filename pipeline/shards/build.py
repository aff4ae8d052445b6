"""`python -m pipeline shards`: adapter -> checked samples -> shards, with a readable summary."""

from __future__ import annotations

from collections import Counter

from pipeline.datasets.registry import open_adapter
from pipeline.shards.config import ShardsConfig
from pipeline.shards.records import read_index
from pipeline.shards.writer import ShardsOutcome, write_shards


def build_shards(config: ShardsConfig, progress: bool = True) -> ShardsOutcome:
    adapter, root = open_adapter(config.dataset, config.split, config.root)
    result = adapter.load()
    return write_shards(
        result,
        config.shard_dir(),
        dataset=config.dataset,
        split=config.split,
        shard_size=config.shard_size,
        root=root,
        progress=progress,
    )


def ensure_shards(config: ShardsConfig) -> ShardsOutcome:
    """Shards for `config`: the existing ones when their index is readable (they may have been
    copied from elsewhere, without the raw data), else written now. `make shards` rebuilds."""
    try:
        return ShardsOutcome(read_index(config.shard_dir()), config.shard_dir(), up_to_date=True)
    except FileNotFoundError:
        return build_shards(config, progress=True)


def summarize(outcome: ShardsOutcome) -> str:
    index = outcome.index
    lines = [
        f"shards     {outcome.out_dir}",
        f"status     {'up to date: nothing to do' if outcome.up_to_date else 'written'}",
        *(f"  rewrote damaged {why}" for why in outcome.damaged),
        f"samples    {index.num_samples} in {len(index.shards)} shard(s) of up to {index.shard_size}",
        f"classes    {len(index.classes)}",
        f"fingerprint {index.fingerprint[:16]}",
        f"repaired   {len(index.repaired)}",
        f"skipped    {len(index.skipped)}",
    ]
    for reason, count in Counter(s.reason for s in index.skipped).most_common():
        lines.append(f"  {count:6d} x {reason}")
    for skip in index.skipped[:20]:
        lines.append(f"  skipped {skip.source}: {skip.reason}")
    if len(index.skipped) > 20:
        lines.append(f"  ... {len(index.skipped) - 20} more in {outcome.out_dir / 'index.json'}")
    for fix in index.repaired[:10]:
        lines.append(f"  repaired {fix.source}: {fix.reason}")
    if len(index.repaired) > 10:
        lines.append(f"  ... {len(index.repaired) - 10} more in {outcome.out_dir / 'index.json'}")
    return "\n".join(lines)
