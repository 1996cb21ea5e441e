"""Who may import whom, checked on the source: every import counts, top-level, lazy or TYPE_CHECKING.

The rooms (STYLE.md): `proto` imports nothing of ours; `shm` only `proto`; `core` only `proto` and
`shm`; `backends` only `proto` and `shm` (a worker never loads the core); `frontends` translate, so they
may use `core`, `proto` and `shm` but never a backend; `bench` is a client and sees only `proto`; the
`tritonpy` package itself only names the version and starts the CLI.
Inside `core`, the sub-rooms are layered along a request's path, lowest first; a module may import its
own layer and those below, never above. `model`, `repository` and `ensemble` share one layer: loading a
model reads the repository and checks ensembles, and each needs the others' types.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("proto", "shm", "core", "backends", "frontends", "bench", "tritonpy")
MAY_IMPORT = {
    "proto": set(),
    "shm": {"proto"},
    "core": {"proto", "shm"},
    "backends": {"proto", "shm"},
    "frontends": {"core", "proto", "shm"},
    "bench": {"proto"},
    # the top package: `__version__` (from core) and `python -m tritonpy` (the CLI)
    "tritonpy": {"core", "frontends"},
}
# Third-party packages a room must never import (the core is framework- and transport-neutral).
BANNED = {
    "core": {"aiohttp", "grpc", "torch", "onnxruntime", "tensorflow", "openvino", "tensorrt", "pickle", "cloudpickle"},
    "backends": {"aiohttp", "grpc", "pickle", "cloudpickle"},
    "shm": {"aiohttp", "grpc", "pickle", "cloudpickle"},
    "proto": {"aiohttp", "pickle", "cloudpickle"},
    "frontends": {"pickle", "cloudpickle"},
}
# Layers inside core, lowest first. Top-level modules not named here form the facade layer (last).
CORE_BASE = {"errors", "types", "options", "shm_registry"}
CORE_LAYERS = [CORE_BASE, {"tenancy"}, {"observability"}, {"scheduling"}, {"instance"},
               {"model", "repository", "ensemble"}]
FACADE_LAYER = len(CORE_LAYERS)


def _modules(room: str) -> list[Path]:
    return sorted(p for p in (ROOT / room).rglob("*.py")
                  if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")) and ".venv" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in the file, relative ones resolved."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = ["tritonpy", *rel.parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from tritonpy.core import tenancy` names a module too: check the deepest one.
            names = [f"{module}.{a.name}" for a in node.names] if module in {f"tritonpy.{r}" for r in ROOMS} else []
            found += [(node.lineno, n) for n in names] or [(node.lineno, module)]
    return found


def _core_layer(parts: list[str]) -> int:
    """Layer of a module given its path parts under core/ (`["instance", "bls"]`, `["server"]`)."""
    for i, layer in enumerate(CORE_LAYERS):
        if parts[0] in layer:
            return i
    return FACADE_LAYER


def _violations(room: str) -> list[str]:
    bad = []
    for path in _modules(room):
        where = path.relative_to(ROOT)
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] in BANNED.get(room, set()):
                bad.append(f"{where}:{line} imports {module} (banned in {room}/)")
            if parts[0] != "tritonpy" or len(parts) < 2:
                if parts[0] in ROOMS and parts[0] != "tritonpy":
                    bad.append(f"{where}:{line} imports {module} bare (use tritonpy.{module})")
                continue
            target = parts[1]
            if target != room and target not in MAY_IMPORT[room]:
                bad.append(f"{where}:{line} imports {module} ({room}/ may not import {target}/)")
            if room == "core" and target == "core" and len(parts) > 2:
                src_parts = list(where.with_suffix("").parts[1:])
                if src_parts[-1] == "__init__":
                    src_parts = src_parts[:-1] or ["__init__"]
                src, dst = _core_layer(src_parts), _core_layer(parts[2:])
                if dst > src:
                    bad.append(f"{where}:{line} imports {module} (core layer {dst} above its own {src})")
    return bad


@pytest.mark.parametrize("room", ROOMS)
def test_room_imports_only_what_it_may(room):
    assert _violations(room) == []


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The check is not vacuous: a core module importing aiohttp, a frontend and a higher layer fails."""
    fake_root = tmp_path
    (fake_root / "core" / "tenancy").mkdir(parents=True)
    (fake_root / "core" / "tenancy" / "bad.py").write_text(
        "import aiohttp\nfrom tritonpy.frontends import cli\nfrom tritonpy.core.instance import pool\n"
        "def f():\n    from tritonpy.backends.worker import process\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    found = _violations("core")
    assert any("aiohttp" in v for v in found)
    assert any("may not import frontends" in v for v in found)
    assert any("may not import backends" in v for v in found)
    assert any("core layer 4 above its own 1" in v for v in found)
