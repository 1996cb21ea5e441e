"""A short coverage-guided fuzzing pass (atheris) over the parsers of untrusted bytes: the HTTP
body and binary-extension parser, config.pbtxt / JSON configurations, core<->worker frames.

scripts/fuzz.py is the long-running tool (`--seconds 600` per target); here each target gets a few
thousand inputs with a fixed seed, so the run is short and repeatable. Without atheris (no wheel
for this Python) the hypothesis suites (test_http_fuzz.py and friends) still cover the parsers.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz.py"


@pytest.mark.parametrize("target", ["http", "config", "messages"])
def test_short_fuzz_run_finds_nothing(tmp_path, target):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), target, "--runs", "4000", "--seed", "1",
         "--corpus", str(tmp_path / "corpus"), "--artifacts", str(tmp_path)],
        capture_output=True, text=True, timeout=100, check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "Done 4000 runs" in run.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_saved_inputs_replay(tmp_path):
    """`fuzz.py TARGET FILE...` replays saved inputs (how a crash found by a long run is checked)."""
    saved = tmp_path / "input"
    saved.write_bytes(b"\x63garbage")  # an unknown message kind: a MessageError, handled
    run = subprocess.run([sys.executable, str(SCRIPT), "messages", str(saved)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and f"{saved}: ok" in run.stdout, run.stderr[-3000:]
