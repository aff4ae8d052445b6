"""The map-quality report of a box-teacher entry, on a local root and on S3 (moto's server):
counts, invalid reasons, per-domain groups, figures against hand-computed area shares, and
report.json / report.png written into the entry through the cache's file layer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import fsspec
import numpy as np
import pytest
from report_fixtures import box_entry, make_shards

from pipeline.cache import CacheEntry, CacheSpec, ShardMaps
from pipeline.cache.report import write_report
from pipeline.cli import main as pipeline_main
from teacher.baselines import NO_BOXES

moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")

# Box area share of the image for the four rows with boxes (s2's boxes overlap by 5 x 5 px).
AREA_SHARE = {
    "s0": 16 * 16 / (48 * 32),
    "s1": 20 * 24 / (32 * 48),
    "s2": (100 + 200 - 25) / (40 * 40),
    "s4": 30 * 30 / (64 * 48),
}


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, Any]]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket="reports")  # fmt: skip
    yield {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    server.stop()


def read_back(url: str, options: dict[str, Any] | None) -> tuple[dict, bytes]:
    """report.json and report.png with plain fsspec, as another team would read them."""
    fs, path = fsspec.core.url_to_fs(url, **(options or {}))
    return json.loads(fs.cat_file(f"{path}/report.json")), fs.cat_file(f"{path}/report.png")


def check_report(report: dict) -> None:
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"val", "val/photo", "val/sketch"}
    everything = groups["val"]
    assert (everything["rows"], everything["valid"], everything["rows_without_boxes"]) == (5, 4, 1)
    assert everything["valid_fraction"] == pytest.approx(0.8)
    assert everything["invalid_by_reason"] == {NO_BOXES: 1}
    assert (groups["val/photo"]["rows"], groups["val/sketch"]["rows"]) == (2, 3)
    assert groups["val/sketch"]["invalid_by_reason"] == {NO_BOXES: 1}
    assert everything["fg"] == {"correct": 0, "wrong": 0, "unknown": 5, "accuracy": None}

    vlm = everything["maps"]["C_VLM"]
    assert vlm["box_mass"]["n"] == 4
    # The uniform map's box mass is the boxes' area share (these images' pad views put the
    # image edges on cell edges, so the cell-level figure is exact).
    share = sum(AREA_SHARE.values()) / 4
    assert vlm["uniform_box_mass"]["mean"] == pytest.approx(share, abs=1e-6)
    assert vlm["uniform_pointing"]["mean"] == pytest.approx(share, abs=1e-6)
    # The box teacher's own map: its peak is inside a box, most of its mass too.
    assert vlm["pointing"]["mean"] == pytest.approx(1.0)
    assert 0.8 < vlm["box_mass"]["mean"] <= 1.0
    assert everything["maps"]["C_fore"]["box_mass"]["mean"] == pytest.approx(
        vlm["box_mass"]["mean"]
    )
    assert everything["maps"]["C_back"]["box_mass"]["n"] == 0  # all-zero C_back: not counted
    photo = groups["val/photo"]["maps"]["C_VLM"]
    assert photo["uniform_box_mass"]["mean"] == pytest.approx(
        (AREA_SHARE["s0"] + AREA_SHARE["s1"]) / 2, abs=1e-6
    )
    assert {e["key"] for e in report["examples"]["best"]} == set(AREA_SHARE)


def test_report_on_a_local_root_and_from_the_command_line(tmp_path: Path, capsys) -> None:
    shard_dir, index = make_shards(tmp_path)
    entry = box_entry(str(tmp_path / "cache"), shard_dir, index)
    assert pipeline_main(["cache", "report", entry.path, "--shards", str(shard_dir)]) == 0
    out = capsys.readouterr().out
    assert "| val/sketch |" in out and NO_BOXES in out and "report.png" in out
    report, png = read_back(entry.path, None)
    check_report(report)
    assert png.startswith(b"\x89PNG")


@pytest.mark.slow
def test_report_on_an_s3_root_equals_the_local_one(
    tmp_path: Path, s3_options: dict[str, Any]
) -> None:
    shard_dir, index = make_shards(tmp_path)
    local = box_entry(str(tmp_path / "cache"), shard_dir, index)
    root = f"s3://reports/{uuid.uuid4().hex[:8]}"
    remote = box_entry(root, shard_dir, index, storage_options=s3_options)
    local_report, _ = write_report(local, shard_dir)
    remote_report, written = write_report(remote, shard_dir)
    assert written == [f"{remote.path}/report.json", f"{remote.path}/report.png"]
    stored, png = read_back(remote.path, s3_options)
    check_report(stored)
    assert png.startswith(b"\x89PNG")
    assert not Path("s3:").exists()  # nothing went to a local folder named after the URL
    for report in (local_report, remote_report, stored):
        report.pop("entry")
    assert remote_report == local_report and stored == local_report


def test_generate_mode_foreground_accuracy_per_domain_and_which_rows_count(tmp_path) -> None:
    """Hand-made rows: the teacher's own foreground answers per domain, invalid rows left out of
    C_VLM, and a C_back that lies wholly outside the boxes (box mass 0, pointing 0)."""
    shard_dir, index = make_shards(tmp_path)
    grid = 4  # resize view: cells are a quarter of the image on each axis
    spec = CacheSpec(dataset=index.dataset, split=index.split,
                     dataset_fingerprint=index.fingerprint,
                     teacher={"model": "hand", "answer_mode": "generate"})  # fmt: skip
    entry = CacheEntry.create_or_open(
        str(tmp_path / "cache"), spec, index, grid=grid, geometry={"mode": "resize", "size": 336}
    )
    fg = {"s0": 1, "s1": 0, "s2": 1, "s3": -1, "s4": 1}
    invalid = {"s1": "answer has no foreground word", "s3": "no positive mass"}
    outside = {"s0": (3, 3), "s1": (0, 0), "s2": (3, 3), "s3": (0, 0), "s4": (0, 0)}  # no box
    for shard in index.shards:
        n = len(shard.keys)
        c_vlm = np.zeros((n, grid, grid), np.float32)
        c_back = np.zeros((n, grid, grid), np.float32)
        for j, key in enumerate(shard.keys):
            c_back[j][outside[key]] = 0.2
            if key not in invalid:
                c_vlm[j] = 1.0 / grid**2
        entry.write_shard(shard.name, ShardMaps(
            keys=list(shard.keys), c_vlm=c_vlm, c_fore=c_vlm + c_back, c_back=c_back,
            valid=np.array([k not in invalid for k in shard.keys]),
            reason=[invalid.get(k, "") for k in shard.keys], answer=["-"] * n,
            fg_correct=np.array([fg[k] for k in shard.keys], np.int8),
        ))  # fmt: skip
    report, _ = write_report(entry, shard_dir)
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["val"]["fg"] == {"correct": 3, "wrong": 1, "unknown": 1, "accuracy": 0.75}
    assert groups["val/photo"]["fg"]["accuracy"] == 0.5  # s0 right, s1 wrong
    assert groups["val/sketch"]["fg"]["accuracy"] == 1.0  # s2, s4 right; s3 unknown
    assert groups["val"]["invalid_by_reason"] == {v: 1 for v in invalid.values()}
    assert report["answer_mode"] == "generate"
    maps = groups["val"]["maps"]
    assert maps["C_VLM"]["box_mass"]["n"] == 3  # valid rows with boxes: s0, s2, s4
    assert maps["C_back"]["box_mass"] == {"n": 4, "mean": 0.0, "std": 0.0, "median": 0.0}
    assert maps["C_back"]["pointing"]["mean"] == 0.0
    assert maps["C_back"]["entropy"]["n"] == 5  # entropy counts rows without boxes too
    assert maps["C_back"]["entropy"]["mean"] == pytest.approx(0.0)  # one cell each
    # a flat C_VLM on a resize grid is the uniform map itself
    assert maps["C_VLM"]["box_mass"]["mean"] == pytest.approx(
        maps["C_VLM"]["uniform_box_mass"]["mean"]
    )
