"""The linter and the type checker, run as tests so that the README's test command (and CI) enforce them.

ruff uses the rule set in pyproject.toml. mypy checks `proto/`, `shm/` and `core/` strictly and the rest
with its defaults (pyproject.toml `[tool.mypy]`). The rooms sit at the repository root but import as
`tritonpy.<room>`; mypy cannot follow setuptools' editable mapping, so the check runs over a tree of
symlinks that spells the import names.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("proto", "shm", "core", "backends", "frontends", "bench")


def _tool(name: str) -> list[str]:
    pytest.importorskip(name, reason=f"{name} is part of the test extra (pip install -e .[test])")
    return [sys.executable, "-m", name]


def test_ruff_is_clean():
    result = subprocess.run([*_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_mypy_is_clean(tmp_path):
    tree = tmp_path / "src" / "tritonpy"
    tree.mkdir(parents=True)
    for room in ROOMS:
        os.symlink(ROOT / room, tree / room)
    for top in (ROOT / "tritonpy").glob("*.py"):  # the top package itself: __version__, __main__
        os.symlink(top, tree / top.name)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tritonpy-mypy"
    packages = ["-p", "tritonpy"]  # the top package and, through the symlinks, every room
    result = subprocess.run(
        [*_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache), *packages],
        cwd=tree.parent, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
