"""Shard claims: a writer's lease on a shard while it computes it (`claims/<shard>.json`).

Claims split the work between concurrent extractors; they are never needed for correctness
(two writers of one shard write the same deterministic chunks), so a dead claim is taken over.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

from pipeline.cache.files import EntryFiles
from pipeline.cache.manifest import CLAIMS_DIR
from pipeline.io import pretty_json

# Long enough for a 1000-image shard on a slow GPU; an expired claim only costs duplicate work.
DEFAULT_LEASE_S = 2 * 3600.0


class ShardNotCommittedError(LookupError):
    """A reader asked for rows whose shard has no commit record (missing or half written)."""


def claim_is_live(held: dict[str, Any]) -> bool:
    if float(held.get("expires_at", 0.0)) <= time.time():
        return False
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            return True
    return True


def default_writer_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ShardClaims:
    """The claim files of one entry, as seen by one writer."""

    def __init__(self, files: EntryFiles, writer_id: str) -> None:
        self._files = files
        self.writer_id = writer_id

    def take(self, shard_name: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """True if this writer now holds the claim on `shard_name`. A claim is dead once its
        lease expires (`expires_at`, writer's clock) or, on the same host, once its process is
        gone; dead claims are taken over so a crashed run's shards are redone. Taking a claim
        this writer already holds renews its lease."""
        relative = f"{CLAIMS_DIR}/{shard_name}.json"
        now = time.time()
        body = pretty_json(
            {
                "writer": self.writer_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "claimed_at": now,
                "expires_at": now + lease_s,
            }
        )
        if self._files.put_if_absent(relative, body):
            return True
        try:
            held = self._files.get_json(relative)
        except FileNotFoundError:  # released between our attempt and our read
            held = {}
        if held.get("writer") == self.writer_id:
            self._files.put(relative, body)  # renew our own lease
            return True
        if claim_is_live(held):
            return False
        # Dead claim: take it over. Two takers can both get here; they then compute the same
        # deterministic chunks, which costs time but cannot corrupt anything.
        self._files.remove(relative)
        return self._files.put_if_absent(relative, body)

    def release(self, shard_name: str) -> None:
        """Drop this writer's claim (never someone else's)."""
        relative = f"{CLAIMS_DIR}/{shard_name}.json"
        try:
            held = self._files.get_json(relative)
        except FileNotFoundError:
            return
        if held.get("writer") == self.writer_id:
            self._files.remove(relative)
