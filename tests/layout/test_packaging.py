"""The folder -> import-name mapping holds in a built wheel and in the editable install, and every
module imports on its own in a fresh interpreter (no import cycles, no missing subpackage)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = {"core": "tritonpy.core", "backends": "tritonpy.backends", "frontends": "tritonpy.frontends",
         "shm": "tritonpy.shm", "proto": "tritonpy.proto", "bench": "tritonpy.bench"}


def all_modules() -> list[str]:
    names = []
    for folder, package in ROOMS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join([package, *parts]))
    return names


def _import_alone(module: str, env: dict | None = None, cwd: str | None = None) -> tuple[str, int, str]:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)
    return module, proc.returncode, proc.stderr[-2000:]


@pytest.mark.timeout(600)
def test_every_module_imports_alone():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_import_alone, all_modules()))
    failures = [f"{m}:\n{err}" for m, rc, err in results if rc != 0]
    assert not failures, "\n".join(failures)


def test_editable_install_maps_folders():
    code = "import tritonpy.core, tritonpy.proto, tritonpy.shm, tritonpy.frontends, tritonpy.backends; " \
           "print(tritonpy.core.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert Path(out.stdout.strip()) == ROOT / "core" / "__init__.py"


def test_no_bare_room_imports():
    offenders = []
    for folder in list(ROOMS) + ["tests", "scripts", "examples"]:
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                s = line.strip()
                for room in ROOMS:
                    if s.startswith((f"import {room}", f"from {room} ", f"from {room}.")):
                        offenders.append(f"{path}:{n}: {s}")
    assert not offenders, offenders


def build_wheel(tmp_path: Path, out: Path) -> None:
    """Build the wheel from a copy of the source tree: setuptools writes a build/ folder into the
    tree it builds, and a stale one there would smuggle deleted modules into the next wheel."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "model_repository", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(source)], check=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_and_imports_outside_the_repo(tmp_path):
    wheel_dir = tmp_path / "wheel"
    build_wheel(tmp_path, wheel_dir)
    wheels = list(wheel_dir.glob("tritonpy-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, str(wheels[0])],
                   check=True, timeout=300)
    # Dependencies come from the development environment's site-packages (PYTHONPATH does not run
    # its .pth files, so the editable tritonpy there stays invisible); tritonpy comes from the wheel.
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    py = str(venv / "bin" / "python")
    where = subprocess.run([py, "-c", "import tritonpy.core; print(tritonpy.core.__file__)"], capture_output=True,
                           text=True, env=env, cwd=str(tmp_path), check=True).stdout.strip()
    assert where.startswith(target), where
    failures = []
    for module in all_modules():
        proc = subprocess.run([py, "-c", f"import {module}"], capture_output=True, text=True, env=env,
                              cwd=str(tmp_path), timeout=120)
        if proc.returncode != 0:
            failures.append(f"{module}: {proc.stderr[-500:]}")
    assert not failures, "\n".join(failures)
    entry_points = next(Path(target).glob("tritonpy-*.dist-info")) / "entry_points.txt"
    assert "tritonpy-server = tritonpy.frontends.cli:main" in entry_points.read_text()
    # The top package: its version, and `python -m tritonpy`.
    from tritonpy import __version__

    version = subprocess.run([py, "-c", "import tritonpy; print(tritonpy.__version__)"], capture_output=True,
                             text=True, env=env, cwd=str(tmp_path), check=True).stdout.strip()
    assert version == __version__
    proc = subprocess.run([py, "-m", "tritonpy", "--version"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=120)
    assert proc.stdout.strip() == f"tritonpy-server {__version__}", proc.stderr


@pytest.mark.timeout(600)
def test_wheel_carries_the_top_package_and_its_version(tmp_path):
    """What the wheel holds (this part needs no second venv, so it also runs in a worktree)."""
    import zipfile

    from tritonpy import __version__

    build_wheel(tmp_path, tmp_path / "wheel")
    wheel = next((tmp_path / "wheel").glob("tritonpy-*.whl"))
    assert wheel.name.startswith(f"tritonpy-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tritonpy/__init__.py", "tritonpy/__main__.py", "tritonpy/core/__init__.py"} <= names
