"""Is the Hugging Face hub reachable? Decided once per process, before any model is loaded.

Without network, huggingface_hub retries every metadata request (five times, with back-off),
once per candidate file, so a load that can only fail takes minutes and buries its error under
"Retrying in Ns" warnings. One short probe (or the user's own `HF_HUB_OFFLINE`) settles it
first; when the hub does not answer, huggingface_hub's offline mode is switched on for this
process and its children, so transformers and timm read only the local Hugging Face cache, at
once, and a missing file is one clear error instead of a retry storm.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

from huggingface_hub import constants
from huggingface_hub.utils import get_session

# A reachable hub answers a HEAD in well under a second; this bounds the wait when packets are
# silently dropped (a firewall), while refused connections and bad proxies fail at once.
PROBE_TIMEOUT_ENV = "LFI_HUB_PROBE_TIMEOUT_S"
DEFAULT_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class HubAccess:
    """Whether this process may use the hub, and why (said in notes and error messages)."""

    online: bool
    reason: str


_lock = threading.Lock()
_decided: HubAccess | None = None


def probe_timeout_s() -> float:
    return float(os.environ.get(PROBE_TIMEOUT_ENV, DEFAULT_PROBE_TIMEOUT_S))


def probe(endpoint: str, timeout_s: float) -> HubAccess:
    """One HEAD on the hub's endpoint through huggingface_hub's own HTTP session (so the same
    HF_ENDPOINT, proxies and certificates as the downloads), without retries."""
    try:
        response = get_session().head(endpoint, timeout=timeout_s)
    except Exception as err:  # refused, timed out, bad proxy, bad URL: all mean unreachable
        return HubAccess(False, f"no answer from {endpoint}: {type(err).__name__}: {err}")
    if response.status_code >= 500:  # a failing hub makes downloads retry just the same
        return HubAccess(False, f"{endpoint} answered HTTP {response.status_code}")
    return HubAccess(True, f"{endpoint} answered HTTP {response.status_code}")


def go_offline() -> None:
    """huggingface_hub's offline mode for this process (every library asks
    `huggingface_hub.constants.is_offline_mode()` per request) and its children (the env var:
    torchrun ranks, Dask workers)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def hub_access() -> HubAccess:
    """This process's answer, probed on first use; `HF_HUB_OFFLINE=1` skips the probe."""
    global _decided
    with _lock:
        if _decided is None:
            if constants.is_offline_mode():
                _decided = HubAccess(False, "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set")
            else:
                _decided = probe(constants.ENDPOINT, probe_timeout_s())
                if not _decided.online:
                    go_offline()
                    note(
                        f"Hugging Face hub unreachable ({_decided.reason}): using local files "
                        "only (HF_HUB_OFFLINE=1 for this run)"
                    )
        return _decided


def hub_cache_dir() -> str:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, or HF_HOME/hub)."""
    return constants.HF_HUB_CACHE


_noted: set[str] = set()


def note(message: str) -> None:
    """A line for the person running the command, on stderr; once per process (a checkpoint is
    looked up by the pre-flight check, the spec and the load alike)."""
    if message not in _noted:
        _noted.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)
