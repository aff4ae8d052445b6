"""The environment the suite runs in is the committed lock's, and nothing comes from outside it.

A fresh machine gets exactly what the tests ran with: `make setup` installs requirements.lock
(`uv pip compile` of pyproject.toml's ranges; `make lock` refreshes it on purpose). These tests
read the installed distributions through importlib.metadata and the lock's text, independently
of the Makefile; conftest.py also fails the session when a module was imported from outside the
virtual environment, the repository and the standard library.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)(?:\s*;\s*(.+))?$")


def locked_pins() -> dict[str, tuple[str, str | None]]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[canonicalize_name(match[1])] = (match[2], match[3])
    return pins


def test_every_locked_package_is_installed_at_its_locked_version():
    from packaging.markers import Marker

    pins = locked_pins()
    assert len(pins) > 100, "requirements.lock lists the whole resolved environment"
    wrong = []
    for name, (version, marker) in pins.items():
        if marker and not Marker(marker).evaluate():
            continue  # for another Python or platform
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong.append(f"{name}: locked {version}, installed {installed}")
    assert not wrong, "run `make setup` (the environment is not the lock's):\n" + "\n".join(wrong)


def test_the_lock_satisfies_the_project_requirements():
    """requirements.lock was resolved from pyproject.toml's current ranges (else `make lock`)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pins = locked_pins()
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (pyproject.toml) is not in requirements.lock: make lock"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject's {requirement}: make lock"
        )


def test_the_interpreter_is_the_virtual_environment():
    assert sys.prefix != sys.base_prefix, "the suite runs inside .venv (make test), not globally"
    assert Path(sys.executable).parent.parent.resolve() == Path(sys.prefix).resolve()


def test_a_module_from_the_base_interpreter_is_caught(monkeypatch):
    import sysconfig
    import types

    from conftest import modules_from_outside

    assert modules_from_outside() == []  # this session so far
    stray = types.ModuleType("stray")
    stray.__file__ = str(Path(sysconfig.get_paths()["stdlib"]) / "site-packages" / "stray.py")
    monkeypatch.setitem(sys.modules, "stray", stray)
    assert [m.split(" ")[0] for m in modules_from_outside()] == ["stray"]


def test_lock_changes_lists_added_removed_and_changed_pins(tmp_path):
    import subprocess

    old, new = tmp_path / "old.lock", tmp_path / "new.lock"
    old.write_text("torch==2.14.1\n    # via x\nZarr==3.1.5\nsix==1.16.0\n")
    new.write_text("torch==2.14.1\nzarr==3.1.6\nuv==0.13.9 ; python_version >= '3.8'\n")
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "lock_changes.py"), str(old), str(new)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines() == [
        "  removed  six 1.16.0",
        "  added    uv 0.13.9",
        "  changed  zarr 3.1.5 -> 3.1.6",
    ]
