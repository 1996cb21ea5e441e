"""scripts/serve_examples.sh installs only what serving needs, with pip's progress visible, and the
test command the rest (issue 19, item 13). Run against a stand-in venv whose `python` records
what it is asked to do, so nothing is installed."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STUB = """#!/usr/bin/env bash
echo "python $*" >> "$(dirname "$0")/../calls.txt"
"""


def _fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "tritonpy-server"):
        tool = venv / "bin" / name
        tool.write_text(STUB.replace("python $*", f"{name} $*"))
        tool.chmod(0o755)
    return venv


def _run(script: str, venv: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITONPY_EXTRAS"}
    env["TRITONPY_VENV"] = str(venv)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / script), "--http-port", "9"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (venv / "calls.txt").read_text().splitlines()
    # The install says so first (pip's own progress follows), rather than staying silent.
    assert ("dev_env: installing" in proc.stderr) == any(" pip install" in c for c in calls)
    return calls


def test_serving_installs_the_examples_extra_only(tmp_path):
    venv = _fake_venv(tmp_path)
    calls = _run("serve_examples.sh", venv)
    installs = [c for c in calls if " pip install" in c]
    assert installs == [f"python -m pip install --progress-bar on -e {ROOT}[examples]"]
    assert calls[-1] == f"tritonpy-server --model-repository {ROOT}/examples/model_repository --http-port 9"
    # Served once: a second start installs nothing.
    (venv / "calls.txt").unlink()
    assert not [c for c in _run("serve_examples.sh", venv) if " pip install" in c]
