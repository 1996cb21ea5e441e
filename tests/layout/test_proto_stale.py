"""The committed generated code in proto/ matches what scripts/gen_proto.py produces now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_generated_proto_code_is_fresh():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is needed to regenerate")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"stale generated code:\n{proc.stdout}\n{proc.stderr}"
