"""The shipped OpenAPI description of the HTTP API: it is in the package, it names every route the
server has, and schemathesis, driving a live server from it, finds no 500s and no response that
breaks it (status codes, content types, bodies, headers)."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from importlib import resources
from pathlib import Path

import yaml

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from tritonpy.frontends.http import app

SUPPORT = Path(__file__).resolve().parents[1] / "support"
CHECKS = ",".join(["no_internal_error", "status_code_conformance", "content_type_conformance",
                   "response_schema_conformance", "response_headers_conformance"])


def load_spec() -> dict:
    text = resources.files("tritonpy.frontends.http").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _concrete(path: str) -> str:
    return (path.replace("{model_name}", "m").replace("{model_version}", "1")
            .replace("{region_name}", "r"))


def test_the_spec_and_the_router_agree():
    spec = load_spec()
    assert spec["openapi"].startswith("3.")
    for path, item in spec["paths"].items():
        found = app.route(_concrete(path))
        assert found is not None, f"{path} is documented but not routed"
        _, methods, _, _ = found
        documented = {m.upper() for m in item if m in ("get", "post", "put", "delete")}
        assert documented == set(methods), (path, documented, methods)
    for fixed in app._FIXED_ROUTES:
        assert fixed in spec["paths"], f"{fixed} is routed but not documented"


def test_schemathesis_finds_nothing_against_a_live_server(tmp_path, leak_check):
    repo = tmp_path / "repo"
    python_model(repo, "simple", "out = x.copy()", config=FP32_IO)
    spec_path = tmp_path / "openapi.yaml"
    spec_path.write_text(resources.files("tritonpy.frontends.http").joinpath("openapi.yaml").read_text())
    server = ServerProcess(repo, "--model-control-mode=explicit", "--load-model=simple", "--allow-client-shm=true")
    with server:
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
               "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "run",
               str(spec_path), "--url", f"http://{server.http_url}", "--checks", CHECKS,
               "--max-examples", "5", "--generation-deterministic", "--workers", "1",
               # The examples and coverage phases are deterministic (~1,000 requests, seconds); the
               # open-ended fuzzing phase runs until a time budget, so it is left to docs/openapi.md.
               "--phases", "examples,coverage", "--request-timeout", "30", "--max-time", "90"]
        run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=100, check=False)
        report = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, report
        assert " passed" in run.stdout and "failure" not in run.stdout.split("SUMMARY")[-1], report
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/live", timeout=5) as r:
            assert r.status == 200
    assert server.proc.returncode == 0, server.output()[-3000:]
