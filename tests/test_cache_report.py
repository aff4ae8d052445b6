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
import pytest
from report_fixtures import box_entry, make_shards

from pipeline.cache_report import write_report
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
