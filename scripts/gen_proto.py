#!/usr/bin/env python3
"""Regenerate the protobuf/gRPC Python code in ``proto/`` from the ``.proto`` sources there.

    python scripts/gen_proto.py            # rewrite proto/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python scripts/gen_proto.py --check    # exit 1 (with a diff summary) if they are stale

Needs ``grpcio-tools`` in the running interpreter (``python -m grpc_tools.protoc``); the
output depends on its version, so regenerate and check with the version pinned for
development. It does not need tritonpy to be importable.

Two things are done on top of plain protoc, and both are about living next to tritonclient
in one process:

1. Import paths. The sources sit in ``proto/`` but are imported as ``tritonpy.proto``, so
   they are staged under ``<tmp>/tritonpy/proto/`` and compiled from ``<tmp>``. protoc then
   names each file ``tritonpy/proto/<name>.proto`` in its descriptor and writes
   ``from tritonpy.proto import model_config_pb2`` instead of a bare
   ``import model_config_pb2`` (which would resolve to nothing, or to a stranger's module).
   That is also why ``grpc_service.proto`` imports ``"tritonpy/proto/model_config.proto"``.

2. A private descriptor pool. Distinct file names are not enough: tritonclient's generated
   modules put ``inference.ModelConfig``, ``inference.DataType``, ... into protobuf's
   *default* pool, and a pool refuses a second definition of a full name coming from a
   different file. With protobuf 6 (upb) importing both gives ``TypeError: Couldn't build
   proto file into descriptor pool: duplicate symbol 'inference.DataType'``, whichever is
   imported second; the pure-Python implementation fails the same way ("Conflict register
   for file ..."). The full names must stay as they are (they are Triton's, and the
   service name is part of every gRPC method path), so each generated ``*_pb2.py`` is
   rewritten to add its file to the pool returned by ``tritonpy.proto.descriptor_pool()``
   instead of ``descriptor_pool.Default()``. Message classes built from a non-default pool
   are ordinary generated classes: serialization, text_format and json_format work as usual.
   Caveat: under the pure-Python protobuf runtime
   (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``), protobuf's builder also copies every
   message descriptor into the default symbol database, so there the two packages still
   cannot share a process (each works alone). upb, the default runtime, has no such step.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
# Path of the sources as seen by protoc (and so as registered in the descriptor pool).
STAGE_PREFIX = Path("tritonpy") / "proto"
IMPORT_PACKAGE = "tritonpy.proto"

SOURCES = ("model_config.proto", "grpc_service.proto", "health.proto")
# Only these define services; protoc would emit an empty *_pb2_grpc.py for the others.
SERVICE_SOURCES = ("grpc_service.proto", "health.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_DEFAULT_POOL_CALL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_CALL = "_tritonpy_descriptor_pool().AddSerializedFile("
_IMPORTS_MARKER = "# @@protoc_insertion_point(imports)\n"
_PRIVATE_POOL_IMPORT = (
    "# Rewritten by scripts/gen_proto.py: registered in tritonpy's private pool, not the\n"
    "# default one, so that tritonclient's identically named messages can coexist.\n"
    f"from {IMPORT_PACKAGE} import descriptor_pool as _tritonpy_descriptor_pool\n"
)


def generated_names() -> list[str]:
    names = []
    for source in SOURCES:
        stem = source.removesuffix(".proto")
        names += [stem + "_pb2.py", stem + "_pb2.pyi"]
        if source in SERVICE_SOURCES:
            names.append(stem + "_pb2_grpc.py")
    return sorted(names)


def _protoc(args: list[str], cwd: Path) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"gen_proto: protoc failed ({proc.returncode}): {' '.join(cmd)}")


def _use_private_pool(path: Path) -> None:
    text = path.read_text()
    if text.count(_DEFAULT_POOL_CALL) != 1 or text.count(_IMPORTS_MARKER) != 1:
        # protoc's output layout changed: fail loudly rather than ship default-pool code.
        raise SystemExit(f"gen_proto: unexpected protoc output layout in {path.name}; "
                         "update _use_private_pool()")
    text = text.replace(_IMPORTS_MARKER, _IMPORTS_MARKER + _PRIVATE_POOL_IMPORT)
    text = text.replace(_DEFAULT_POOL_CALL, _PRIVATE_POOL_CALL)
    path.write_text(text)


def generate(dest: Path) -> None:
    """Write every generated file into ``dest`` (a flat directory)."""
    with tempfile.TemporaryDirectory(prefix="tritonpy_gen_proto_") as tmp:
        src_root = Path(tmp) / "src"
        out_root = Path(tmp) / "out"
        (src_root / STAGE_PREFIX).mkdir(parents=True)
        out_root.mkdir()
        for source in SOURCES:
            shutil.copyfile(PROTO_DIR / source, src_root / STAGE_PREFIX / source)

        staged = [str(STAGE_PREFIX / s) for s in SOURCES]
        staged_services = [str(STAGE_PREFIX / s) for s in SERVICE_SOURCES]
        _protoc(["-I.", f"--python_out={out_root}", f"--pyi_out={out_root}", *staged], src_root)
        _protoc(["-I.", f"--grpc_python_out={out_root}", *staged_services], src_root)

        produced = out_root / STAGE_PREFIX
        found = sorted(p.name for p in produced.iterdir())
        if found != generated_names():
            raise SystemExit(f"gen_proto: protoc produced {found}, expected {generated_names()}")
        dest.mkdir(parents=True, exist_ok=True)
        for name in found:
            if name.endswith("_pb2.py"):
                _use_private_pool(produced / name)
            shutil.copyfile(produced / name, dest / name)


def _tools_version() -> str:
    try:
        from importlib.metadata import version

        return f"grpcio-tools {version('grpcio-tools')}"
    except Exception:  # noqa: BLE001 - only used in a message
        return "grpcio-tools (version unknown)"


def _first_difference(committed: str, fresh: str) -> str:
    """Where two texts first differ, with a short window (the descriptor lines are long)."""
    for lineno, (a, b) in enumerate(zip(committed.splitlines(), fresh.splitlines()), start=1):
        if a != b:
            col = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            lo = max(col - 40, 0)
            return (f"  first difference at line {lineno}, column {col + 1}:\n"
                    f"    committed:   ...{a[lo:col + 40]!r}\n"
                    f"    regenerated: ...{b[lo:col + 40]!r}")
    return "  the texts differ only in their number of lines"


def check() -> int:
    """Regenerate into a temp dir and compare with the committed files; 0 when identical."""
    with tempfile.TemporaryDirectory(prefix="tritonpy_gen_proto_check_") as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        problems: list[str] = []
        for name in generated_names():
            fresh = (fresh_dir / name).read_text()
            committed_path = PROTO_DIR / name
            if not committed_path.exists():
                problems.append(f"missing: proto/{name}")
                continue
            committed = committed_path.read_text()
            if committed != fresh:
                diff = list(difflib.unified_diff(
                    committed.splitlines(), fresh.splitlines(),
                    f"proto/{name} (committed)", f"proto/{name} (regenerated)", lineterm="", n=1))
                shown = "\n".join(line[:160] for line in diff[:20])
                more = f"\n  ... {len(diff) - 20} more diff lines" if len(diff) > 20 else ""
                problems.append(f"stale: proto/{name}\n{shown}{more}\n"
                                f"{_first_difference(committed, fresh)}")
    if problems:
        print(f"gen_proto --check: generated code is stale ({_tools_version()}):", file=sys.stderr)
        for problem in problems:
            print(problem, file=sys.stderr)
        print("Run: python scripts/gen_proto.py", file=sys.stderr)
        return 1
    print(f"gen_proto --check: {len(generated_names())} generated files up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the committed generated files are stale")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    generate(PROTO_DIR)
    print(f"gen_proto: wrote {', '.join(generated_names())} into {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
