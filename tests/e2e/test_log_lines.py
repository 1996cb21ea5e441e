"""A Python model's log lines come out as server lines of their own, quoted once (as Triton prints
them), and `--log-format json` writes one JSON object per line, worker lines included (issue 19)."""
from __future__ import annotations

import json
import re
import textwrap

import pytest

from support.server_process import ServerProcess

MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pb_utils.Logger.log_warn('model says "hi"')
        print("a plain print")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""


@pytest.fixture
def repo(tmp_path):
    d = tmp_path / "talker"
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(
        'name: "talker"\nbackend: "python"\n'
        'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
    )
    (d / "1" / "model.py").write_text(textwrap.dedent(MODEL))
    return tmp_path


def test_worker_log_lines_are_quoted_once(repo, leak_check):
    with ServerProcess(repo) as server:
        pass
    out = server.output()
    lines = [line for line in out.splitlines() if "model says" in line]
    assert len(lines) == 1, out
    assert re.match(r'^W\d{4} [\d:.]+ \d+ model\.py:7\] "model says \\?"hi\\?""$', lines[0]), lines[0]
    assert "stderr: W" not in out  # not wrapped in a server line
    assert any(line.endswith('"[talker/talker_0] stdout: a plain print"') for line in out.splitlines()) or \
        any(line.endswith('"[talker/talker_0] stderr: a plain print"') for line in out.splitlines()), out


def test_json_log_format(repo, leak_check):
    with ServerProcess(repo, "--log-format", "json") as server:
        pass
    records = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    said = [r for r in records if r["message"] == 'model says "hi"']
    assert len(said) == 1 and said[0]["level"] == "WARNING" and said[0]["source"] == "model.py:7"
    assert said[0]["instance"] == "talker/talker_0"
    assert any(r["message"].startswith("Started HTTPService") for r in records)
    assert {"time", "level", "pid", "source", "message"} <= set(records[0])
