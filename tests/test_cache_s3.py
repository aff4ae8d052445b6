"""The map cache on S3: a real S3 HTTP API (moto's server on 127.0.0.1) against a local root."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from cache_fixtures import (
    GRID,
    expected_maps,
    make_index,
    make_spec,
    read_arrays_plain,
    read_json_plain,
)
from loader_fixtures import write_toy_cache, write_toy_split

from pipeline.cache import CacheEntry, ShardNotCommittedError, cache_key, list_entries, open_entry
from pipeline.cache.cli import add_cache_commands
from pipeline.cache.files import EntryFiles
from pipeline.cache.verify import verify_entry

moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")

pytestmark = pytest.mark.slow
GEOMETRY = {"mode": "resize", "size": 336}


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, Any]]:
    """Start moto's S3 server on a free local port; yield fsspec options that point at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"},
    }
    boto3.client(
        "s3",
        endpoint_url=options["client_kwargs"]["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="maps-bucket")
    yield options
    server.stop()


@pytest.fixture
def s3_root(s3_options: dict[str, Any]) -> str:
    return f"s3://maps-bucket/{uuid.uuid4().hex[:8]}/caches"


def _fill(root: str, options: dict[str, Any] | None, index) -> CacheEntry:
    entry = CacheEntry.create_or_open(
        root, make_spec(index), index, grid=GRID, geometry=GEOMETRY, storage_options=options
    )
    for shard in index.shards[:2]:  # the last shard stays pending
        assert entry.write_shard(shard.name, expected_maps(shard))
    return entry


def test_s3_round_trip_gives_the_same_arrays_as_a_local_run(
    tmp_path: Path, s3_root: str, s3_options: dict[str, Any]
) -> None:
    index = make_index()
    local = _fill(str(tmp_path), None, index)
    remote = _fill(s3_root, s3_options, index)
    assert remote.path == f"{s3_root}/{cache_key(make_spec(index))}"

    # Plain zarr and json on both sides.
    local_arrays = read_arrays_plain(local.path)
    remote_arrays = read_arrays_plain(remote.path, s3_options)
    assert (
        sorted(remote_arrays)
        == sorted(local_arrays)
        == sorted(["c_vlm", "c_fore", "c_back", "valid", "reason", "key", "answer", "fg_correct"])
    )
    for name, values in local_arrays.items():
        assert remote_arrays[name].dtype == values.dtype
        np.testing.assert_array_equal(remote_arrays[name], values, err_msg=name)
    local_manifest = read_json_plain(f"{local.path}/manifest.json")
    remote_manifest = read_json_plain(f"{remote.path}/manifest.json", s3_options)
    history = {"created", "created_by"}
    assert {k: v for k, v in remote_manifest.items() if k not in history} == {
        k: v for k, v in local_manifest.items() if k not in history
    }
    record = read_json_plain(f"{remote.path}/commits/shard-000001.tar.json", s3_options)
    assert (record["row_start"], record["row_stop"]) == (3, 6)

    # Readers over S3: committed shards only, same rows, verify clean, listed under the root.
    reader = open_entry(remote.path, s3_options)
    assert reader.pending_shards() == ["shard-000002.tar"]
    with pytest.raises(ShardNotCommittedError):
        reader.read_shard("shard-000002.tar")
    np.testing.assert_array_equal(
        reader.read_shard("shard-000000.tar").c_vlm, local_arrays["c_vlm"][0:3]
    )
    assert verify_entry(reader) == []
    assert [e.key for e in list_entries(s3_root, s3_options)] == [reader.key]
    assert reader.summary()["rows_written"] == 6


def test_s3_create_if_absent_and_claims_are_exclusive(
    s3_root: str, s3_options: dict[str, Any]
) -> None:
    files = EntryFiles(f"{s3_root}/probe", s3_options)
    assert files.put_if_absent("once.json", b"{}")
    assert not files.put_if_absent("once.json", b'{"second": true}')
    assert files.get_json("once.json") == {}

    index = make_index()
    first = CacheEntry.create_or_open(
        s3_root, make_spec(index), index, grid=GRID, geometry=GEOMETRY, storage_options=s3_options
    )
    second = CacheEntry.create_or_open(
        s3_root,
        make_spec(index),
        index,
        grid=GRID,
        geometry=GEOMETRY,
        storage_options=s3_options,
        writer_id="second",
    )
    assert first.claim_shard("shard-000000.tar")
    assert not second.claim_shard("shard-000000.tar")
    assert first.write_shard("shard-000000.tar", expected_maps(index.shards[0]))
    assert not second.write_shard("shard-000000.tar", expected_maps(index.shards[0]))
    assert second.committed_shards() == {"shard-000000.tar"}


def test_cli_verify_over_s3(s3_root: str, s3_options: dict[str, Any], capsys) -> None:
    entry = _fill(s3_root, s3_options, make_index())
    parser = argparse.ArgumentParser()
    add_cache_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["cache", "verify", entry.path, "--storage-options", json.dumps(s3_options)]
    )
    assert args.func(args) == 0
    assert "OK (2 committed shard(s) verified, 1 pending)" in capsys.readouterr().out


def test_side_files_go_through_the_cache_layer_on_s3(
    tmp_path: Path, s3_root: str, s3_options: dict[str, Any], monkeypatch
) -> None:
    """Previews and audit records of an s3:// entry land in the bucket, and nothing is written
    to a local folder named after the URL (Path("s3://b/k") would make "s3:/b/k")."""
    from teacher.previews import save_previews

    monkeypatch.chdir(tmp_path)
    toy = write_toy_split(tmp_path / "shards", shards=1, per_shard=4)
    entry = write_toy_cache(s3_root, toy, storage_options=s3_options)
    saved = save_previews(entry, toy.split_dir, count=2)
    audit = entry.put_file("audit/shard-000000.tar.audit.jsonl", b'{"key": "s00_001"}\n')
    assert len(saved) == 2 and all(url.startswith(f"{entry.path}/previews/") for url in saved)
    assert audit == f"{entry.path}/audit/shard-000000.tar.audit.jsonl"
    files = EntryFiles(entry.path, s3_options)
    for url in saved:
        png = files.get_bytes(url.removeprefix(f"{entry.path}/"))
        assert png.startswith(b"\x89PNG")
    assert files.get_bytes("audit/shard-000000.tar.audit.jsonl") == b'{"key": "s00_001"}\n'
    assert not (tmp_path / "s3:").exists()
    with pytest.raises(ValueError, match="part of the entry's format"):
        entry.put_file("manifest.json", b"{}")
