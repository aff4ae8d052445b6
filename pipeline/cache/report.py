"""Map-quality report of a cache entry: are its maps any good, measured against the boxes.

    python -m pipeline cache report <entry> [--shards <split dir>]

Joins the entry's committed rows with the shards' records by sample key (boxes, size, domain),
measures C_VLM, C_fore and C_back against the ground-truth boxes on the teacher's grid (through
the manifest's view geometry, pipeline.geometry; a cell counts by its share inside the boxes),
each beside a uniform map over the image on the same rows (pipeline.map_quality), and writes
`report.json` and `report.png` into the entry through the cache's own file layer (so an s3://
entry gets them too). The figure is drawn by pipeline.cache.report_figure.

report.json: `groups` holds one object per split ("train") and per domain ("train/photo"):
rows, valid, valid_fraction, invalid_by_reason, rows_without_boxes, `maps` (C_VLM / C_fore /
C_back, each with box_mass, pointing, entropy {n, mean, std, median} and the `uniform` map's
same figures on the same rows) and `fg` (the teacher's own foreground answers: correct, wrong,
unknown, accuracy; known only in `generate` mode). `examples` names the best and worst rows by
C_VLM box mass.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.cache.entry import CacheEntry
from pipeline.cache.report_rows import ReportRows
from pipeline.geometry import box_coverage, image_rect, teacher_view_rect
from pipeline.io import pretty_json
from pipeline.map_quality import localization, summarize
from pipeline.paths import shards_root
from pipeline.shards.reader import iter_shard
from pipeline.shards.records import read_index

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
MAP_KINDS = {"C_VLM": "c_vlm", "C_fore": "c_fore", "C_back": "c_back"}
METRICS = ("box_mass", "pointing", "entropy")
EXAMPLES = 4


def default_shard_dir(entry: CacheEntry) -> Path:
    spec = entry.manifest["spec"]
    return shards_root() / spec["dataset"] / spec["split"]


def collect_rows(entry: CacheEntry, shard_dir: Path) -> ReportRows:
    """Read the committed shards and join each row to its record by key (never by position)."""
    index = read_index(shard_dir)
    entry.check_matches(index)  # CacheMismatchError if these are not the entry's shards
    geometry, grid = entry.manifest["geometry"], entry.grid
    out: dict[str, list] = {name: [] for name in ("keys", "shards", "domains", "boxes", "sizes")}
    out.update(valid=[], reasons=[], fg=[], coverage=[], uniform=[])
    maps: dict[str, list] = {name: [] for name in MAP_KINDS}
    committed = sorted(entry.committed_shards())
    for name in tqdm(committed, desc="report", unit="shard", leave=False):
        rows = entry.read_shard(name)
        records = {s.key: s.record for s in iter_shard(shard_dir / name)}
        for i, key in enumerate(rows.keys):
            record = records.get(key)
            if record is None:
                raise KeyError(f"{entry.path}: row {key!r} of {name} is not in {shard_dir / name}")
            view = teacher_view_rect(geometry, record.width, record.height)
            image = image_rect(record.width, record.height)
            # float32 / float16 (the cache's own precision) keep 100k rows near 1 GB
            cover = box_coverage(record.boxes, view, grid, clip=image)
            out["coverage"].append(cover.astype(np.float32))
            whole = box_coverage([list(dataclasses.astuple(image))], view, grid)
            out["uniform"].append(whole.astype(np.float32))
            out["keys"].append(key)
            out["shards"].append(name)
            out["domains"].append(record.domain)
            out["boxes"].append([list(b) for b in record.boxes])
            out["sizes"].append((record.width, record.height))
            out["valid"].append(bool(rows.valid[i]))
            out["reasons"].append(rows.reason[i])
            out["fg"].append(int(rows.fg_correct[i]))
            for kind, field in MAP_KINDS.items():
                maps[kind].append(np.asarray(getattr(rows, field)[i], np.float16))
    empty = np.zeros((0, grid, grid))
    return ReportRows(
        keys=out["keys"], shards=out["shards"], domains=out["domains"], boxes=out["boxes"],
        sizes=np.array(out["sizes"], int).reshape(-1, 2), valid=np.array(out["valid"], bool),
        reasons=out["reasons"], fg_correct=np.array(out["fg"], np.int8),
        maps={k: np.stack(v) if v else empty for k, v in maps.items()},
        coverage=np.stack(out["coverage"]) if out["coverage"] else empty,
        uniform=np.stack(out["uniform"]) if out["uniform"] else empty,
    )  # fmt: skip


def row_metrics(rows: ReportRows) -> dict[str, dict[str, np.ndarray]]:
    """Per-row figures of each map kind and of the uniform map (NaN where a row does not count:
    no boxes for box mass and pointing, an invalid row for C_VLM, a map without mass)."""
    boxed = rows.has_boxes
    out = {}
    for kind, maps in {**rows.maps, "uniform": rows.uniform}.items():
        figures = localization(maps, rows.coverage)
        for name in ("box_mass", "pointing"):
            figures[name] = np.where(boxed, figures[name], np.nan)
        if kind == "C_VLM":
            figures = {n: np.where(rows.valid, v, np.nan) for n, v in figures.items()}
        out[kind] = figures
    return out


def _group(rows: ReportRows, metrics: dict, mask: np.ndarray, label: str) -> dict[str, Any]:
    n = int(mask.sum())
    valid = int((rows.valid & mask).sum())
    reasons = Counter(
        r for r, m, v in zip(rows.reasons, mask, rows.valid, strict=True) if m and not v
    )
    fg = rows.fg_correct[mask]
    right, wrong = int((fg == 1).sum()), int((fg == 0).sum())
    maps = {}
    for kind in MAP_KINDS:
        entry = {}
        for name in METRICS:
            values = metrics[kind][name]
            counted = mask & np.isfinite(values)  # the uniform figure on exactly these rows
            entry[name] = summarize(values[counted])
            entry[f"uniform_{name}"] = summarize(metrics["uniform"][name][counted])
        maps[kind] = entry
    return {
        "group": label,
        "rows": n,
        "valid": valid,
        "valid_fraction": valid / n if n else None,
        "invalid_by_reason": dict(sorted(reasons.items())),
        "rows_without_boxes": int((mask & ~rows.has_boxes).sum()),
        "maps": maps,
        "fg": {
            "correct": right,
            "wrong": wrong,
            "unknown": int((fg == -1).sum()),
            "accuracy": right / (right + wrong) if right + wrong else None,
        },
    }


def _examples(rows: ReportRows, metrics: dict) -> dict[str, list[dict[str, Any]]]:
    mass = metrics["C_VLM"]["box_mass"]
    ranked = [int(i) for i in np.argsort(mass) if np.isfinite(mass[i])]  # ascending

    def describe(i: int) -> dict[str, Any]:
        return {
            "key": rows.keys[i],
            "shard": rows.shards[i],
            "row": i,
            "box_mass": float(mass[i]),
            "pointing": float(metrics["C_VLM"]["pointing"][i]),
            "uniform_box_mass": float(metrics["uniform"]["box_mass"][i]),
        }

    best = ranked[::-1][:EXAMPLES]
    worst = [i for i in ranked[:EXAMPLES] if i not in best] if len(ranked) > EXAMPLES else []
    return {"best": [describe(i) for i in best], "worst": [describe(i) for i in worst]}


def build_report(entry: CacheEntry, rows: ReportRows) -> dict[str, Any]:
    spec = entry.manifest["spec"]
    metrics = row_metrics(rows)
    everything = np.ones(len(rows.keys), bool)
    groups = [_group(rows, metrics, everything, spec["split"])]
    for domain in sorted({d for d in rows.domains if d is not None}):
        mask = np.array([d == domain for d in rows.domains], bool)
        groups.append(_group(rows, metrics, mask, f"{spec['split']}/{domain}"))
    summary = entry.summary()
    return {
        "entry": entry.path,
        "cache_key": entry.key,
        "dataset": spec["dataset"],
        "split": spec["split"],
        "teacher": teacher_name(spec["teacher"]),
        "answer_mode": spec["teacher"].get("answer_mode"),
        "grid": entry.grid,
        "geometry": entry.manifest.get("geometry"),
        "shards_committed": summary["shards_committed"],
        "shards_total": summary["shards_total"],
        "groups": groups,
        "examples": _examples(rows, metrics),
        "definitions": {
            "box_mass": "share of the map's mass inside the union of the boxes (cell-level, a "
            "cell counted by its overlap fraction); uniform: the boxes' share of the image",
            "pointing": "coverage of the map's peak cell (1 = wholly inside a box)",
            "entropy": "H(map) / log(G*G); 1 = flat over the whole grid",
            "uniform": "a map uniform over the image, measured on the same rows",
            "rows counted": "C_VLM: valid rows with boxes; C_fore / C_back: rows with boxes "
            "whose map has mass; entropy: every such row, boxes or not",
        },
    }


def teacher_name(teacher_spec: dict[str, Any]) -> str:
    """A short name: the baseline, or the checkpoint the weights came from."""
    if teacher_spec.get("baseline"):
        return f"baseline:{teacher_spec['baseline']}"
    weights = teacher_spec.get("weights")
    return str(weights.get("source")) if isinstance(weights, dict) else "?"


def _cell(summary: dict[str, Any]) -> str:
    return "n/a" if summary["mean"] is None else f"{summary['mean']:.3f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (the CLI prints it; the extraction flow's artifact)."""
    lines = [
        f"# Map quality of `{report['cache_key']}` ({report['dataset']}/{report['split']}, "
        f"teacher {report['teacher']})",
        f"shards committed: {report['shards_committed']}/{report['shards_total']}; each figure "
        "is shown as `map (uniform map)` on the same rows",
        "",
        "| group | rows | valid | no boxes | fg acc | map | n | box mass | pointing | entropy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in report["groups"]:
        acc = g["fg"]["accuracy"]
        head = [
            g["group"],
            str(g["rows"]),
            "n/a" if g["valid_fraction"] is None else f"{g['valid_fraction']:.1%}",
            str(g["rows_without_boxes"]),
            "n/a" if acc is None else f"{acc:.1%}",
        ]
        for kind, figures in g["maps"].items():
            cells = [f"{_cell(figures[m])} ({_cell(figures[f'uniform_{m}'])})" for m in METRICS]
            lines.append(
                "| " + " | ".join([*head, kind, str(figures["box_mass"]["n"]), *cells]) + " |"
            )
            head = [""] * len(head)
    reasons = Counter()
    for g in report["groups"][:1]:
        reasons.update(g["invalid_by_reason"])
    if reasons:
        lines += ["", "invalid rows by reason:"]
        lines += [f"- {reason}: {n}" for reason, n in reasons.most_common()]
    return "\n".join(lines)


def write_report(
    entry: CacheEntry, shard_dir: str | Path | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Compute the report and store report.json and report.png in the entry; returns the
    report and the URLs written."""
    from pipeline.cache.report_figure import render_report_png

    shard_dir = Path(shard_dir) if shard_dir is not None else default_shard_dir(entry)
    rows = collect_rows(entry, shard_dir)
    report = build_report(entry, rows)
    png = render_report_png(report, rows, row_metrics(rows), shard_dir)
    urls = [entry.put_file(REPORT_JSON, pretty_json(report)), entry.put_file(REPORT_PNG, png)]
    return report, urls
