"""What changed between two lock files: `python tools/lock_changes.py OLD NEW`.

`make lock` re-resolves requirements.lock and prints this, so a refresh is a decision someone
reads (an upgraded transformers can change what a tiny teacher's files hold, and so its pinned
cache keys), never a silent side effect. Standard library only: it runs before any install.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (names normalized as PEP 503 says)."""
    found = {}
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None:
            lines.append(f"  added    {name} {after}")
        elif after is None:
            lines.append(f"  removed  {name} {before}")
        else:
            lines.append(f"  changed  {name} {before} -> {after}")
    return lines


def main(argv: list[str]) -> int:
    old_path, new_path = (Path(a) for a in argv)
    old = pins(old_path.read_text()) if old_path.exists() else {}
    lines = changes(old, pins(new_path.read_text()))
    print("\n".join(lines) if lines else "  no package changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
