"""`python -m pipeline cache ls|show|verify|report`: look into map-cache entries from the shell.

Roots and entries are local paths or fsspec URLs; for S3-compatible servers set the usual
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or pass --storage-options as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cache.entry import CacheEntry, ShardNotCommittedError
from pipeline.cache.integrity import read_checked, unchecksummed_arrays
from pipeline.cache.lookup import open_entry, scan_root
from pipeline.cache.spec import CacheMismatchError, teacher_brief
from pipeline.cache.verify import Problem, verify_entry
from pipeline.shards.records import read_index

EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def add_cache_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `cache ls|show|verify|report` on the project's top-level parser."""
    cache = subparsers.add_parser(
        "cache", help="list, show, verify and report on map-cache entries"
    )
    commands = cache.add_subparsers(dest="cache_command", required=True)

    ls = commands.add_parser("ls", help="list the entries under a cache root with their specs")
    ls.add_argument("root", help="cache root: a local path or an fsspec URL (s3://...)")
    ls.set_defaults(func=_ls)

    show = commands.add_parser("show", help="show one entry's spec and per-shard state")
    show.add_argument("entry", help="entry path or URL: <root>/<cache_key>")
    show.set_defaults(func=_show)

    verify = commands.add_parser("verify", help="check manifest, arrays and every committed row")
    verify.add_argument("entry", help="entry path or URL: <root>/<cache_key>")
    verify.add_argument(
        "--shards", default=None, help="shard directory (with index.json) to check keys against"
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="mark every shard with a problem pending (its commit record removed) so the next "
        "`make extract` recomputes exactly those; committed sound shards are not touched",
    )
    verify.set_defaults(func=_verify)

    report = commands.add_parser(
        "report", help="map quality against the boxes; writes report.json and report.png"
    )
    report.add_argument("entry", help="entry path or URL: <root>/<cache_key>")
    report.add_argument(
        "--shards", default=None, help="the split's shard directory (default: data/shards/...)"
    )
    report.set_defaults(func=_report)

    for parser in (ls, show, verify, report):
        parser.add_argument(
            "--storage-options",
            type=json.loads,
            default=None,
            help='fsspec options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\'',
        )


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _reasons(by_reason: dict[str, int]) -> str:
    if not by_reason:
        return ""
    return " (" + ", ".join(f"{reason}: {n}" for reason, n in by_reason.items()) + ")"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _ls(args: argparse.Namespace) -> int:
    try:
        entries, problems = scan_root(args.root, args.storage_options)
    except OSError as err:
        return _fail(f"cannot list {args.root}: {err}")
    rows = []
    for entry in entries:
        s = entry.summary()
        spec = entry.manifest["spec"]
        rows.append(
            [
                entry.key,
                f"{spec['dataset']}/{spec['split']}",
                teacher_brief(spec),
                f"{s['shards_committed']}/{s['shards_total']}",
                f"{s['rows_written']}/{s['rows_total']}",
                str(s["rows_invalid"]),
                entry.manifest.get("created", "-"),
            ]
        )
    header = ["key", "dataset/split", "teacher", "shards", "rows", "invalid", "created"]
    print(_table(rows, header) if rows else f"no cache entries under {args.root}")
    for problem in problems:
        print(f"broken entry: {problem}", file=sys.stderr)
    return EXIT_PROBLEMS if problems else 0


def _open(args: argparse.Namespace) -> CacheEntry | None:
    try:
        return open_entry(args.entry, args.storage_options)
    except (FileNotFoundError, CacheMismatchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def _show(args: argparse.Namespace) -> int:
    entry = _open(args)
    if entry is None:
        return EXIT_USAGE
    m = entry.manifest
    s = entry.summary()
    print(f"entry     {entry.path}")
    print(f"key       {m['cache_key']} (sha256 {m['cache_hash']})")
    print(f"grid      {m['grid']}x{m['grid']}, {m['num_rows']} rows, shard_size {m['shard_size']}")
    print(f"geometry  {json.dumps(m.get('geometry'), sort_keys=True)}")
    print(f"created   {m.get('created', '-')} by {m.get('created_by') or '-'}")
    print(f"libraries {', '.join(f'{k} {v}' for k, v in m.get('library_versions', {}).items())}")
    print("spec")
    print("  " + json.dumps(m["spec"], indent=2, sort_keys=True).replace("\n", "\n  "))
    accuracy = "-" if s["fg_accuracy"] is None else f"{s['fg_accuracy']:.3f} of {s['fg_known']}"
    print(
        f"rows      {s['rows_written']}/{s['rows_total']} written, {s['rows_invalid']} invalid"
        f"{_reasons(s['invalid_by_reason'])}; foreground accuracy {accuracy}"
    )
    rows = []
    for name, state in entry.shard_states().items():
        start, stop = entry.shard_rows(name)
        valid = invalid = writer = when = "-"
        if state == "committed":
            try:
                record = entry.commit_record(name)
                valid, invalid = str(record["valid"]), str(record["invalid"])
                writer, when = record.get("writer", "-"), record.get("committed_at", "-")
            except (ShardNotCommittedError, ValueError, KeyError) as err:
                state = f"committed (record unreadable: {err})"
        rows.append([name, f"{start}-{stop}", state, valid, invalid, writer, when])
    print(_table(rows, ["shard", "rows", "state", "valid", "invalid", "writer", "committed"]))
    return 0


def _verify(args: argparse.Namespace) -> int:
    entry = _open(args)
    if entry is None:
        return EXIT_USAGE
    problems = verify_entry(entry)
    if args.shards is not None:
        problems += _verify_against_index(entry, args.shards)
    committed = len(entry.committed_shards())
    for problem in problems:
        print(f"problem: {problem}")
    unchecked = unchecksummed_arrays(entry)
    if unchecked:
        print(
            f"note: unchecksummed: {', '.join(unchecked)} (an entry made before chunk "
            "checksums; damage that still decodes is caught only by the row checks)"
        )
    if problems and args.repair:
        return _repair(entry, problems)
    if problems:
        print(f"{entry.path}: {len(problems)} problem(s) in {committed} committed shard(s)")
        return EXIT_PROBLEMS
    pending = len(entry.pending_shards())
    print(f"{entry.path}: OK ({committed} committed shard(s) verified, {pending} pending)")
    return 0


def _repair(entry: CacheEntry, problems: list[Problem]) -> int:
    """Uncommit the shards that have problems; the rest of the entry stays as it is."""
    damaged = sorted({p.shard for p in problems if p.shard}, key=entry.shard_names.index)
    for name in damaged:
        entry.uncommit_shard(name)
    left = [p for p in problems if not p.shard]
    if damaged:
        spec = entry.manifest["spec"]
        print(
            f"repair: marked {len(damaged)} shard(s) pending: {', '.join(damaged)}; recompute "
            f"them with the extraction that made this entry (make extract "
            f"DATASET={spec['dataset']} SPLIT={spec['split']} "
            f"SHARD_SIZE={entry.manifest['shard_size']} with its teacher: {teacher_brief(spec)})"
        )
    for problem in left:
        print(f"not repairable here: {problem}")
    return EXIT_PROBLEMS if left else 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.cache.report import report_markdown, write_report

    entry = _open(args)
    if entry is None:
        return EXIT_USAGE
    try:
        report, written = write_report(entry, args.shards)
    except (FileNotFoundError, CacheMismatchError) as err:
        return _fail(str(err))
    print(report_markdown(report))
    for url in written:
        print(f"wrote {url}")
    return 0


def _verify_against_index(entry: CacheEntry, shard_dir: str) -> list[Problem]:
    try:
        index = read_index(shard_dir)
        entry.check_matches(index)
    except (FileNotFoundError, ValueError, CacheMismatchError) as err:
        return [Problem("index", str(err))]
    problems = []
    committed = entry.committed_shards()
    for shard in index.shards:
        if shard.name not in committed:
            continue
        arrays, _ = read_checked(entry, shard.name, ("key",))
        if arrays is None:
            continue  # an unreadable chunk: verify_entry has reported it
        stored = [str(k) for k in arrays["key"]]
        if stored != shard.keys:
            problems.append(
                Problem(shard.name, "stored keys differ from index.json's keys", shard.name)
            )
    return problems
