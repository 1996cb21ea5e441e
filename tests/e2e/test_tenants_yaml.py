"""Tenants files written in YAML: parsed with `yaml.safe_load`, served end to end, hot-reloaded.

The same decisions as tests/test_tenants_e2e.py (which uses JSON) are checked over HTTP and gRPC
against a server started with a `.yaml` file; a malformed file stops start-up with a clear error
naming the line; a rewrite of the YAML file changes access without a restart.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from tritonclient.utils import InferenceServerException
from test_tenants_e2e import CODES, KEYS, PROTOCOLS, TENANTS, auth, failure, infer, make_client

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from support.servers import serve
from tritonpy.core.tenancy.tenants import load_tenants_file

# Written by hand (comments, block style, anchors) so the test proves YAML, not JSON-in-a-.yaml file.
RIGHTS_ALL = "[inference, model-control, shared-memory, statistics, logging, trace]"
YAML_TEXT = f"""\
# tenants of the YAML end-to-end test
tenants:
  admin:
    keys: [{KEYS['admin']}]
    models: ["*"]
    rights: {RIGHTS_ALL}
  team-a:
    keys:
      - {KEYS['team-a']}
    models: [alpha]
    rights: &basic [inference, shared-memory]
  team-b:
    keys: [{KEYS['team-b']}]
    models: [alpha, "be*"]
    rights: [inference, statistics, shared-memory]
  reader:
    keys: [{KEYS['reader']}]
    models: [alpha]
    rights: []
"""


def test_yaml_text_says_what_the_json_fixture_says(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text(YAML_TEXT)
    from_yaml = load_tenants_file(str(path))
    json_path = tmp_path / "tenants.json"
    json_path.write_text(__import__("json").dumps(TENANTS))
    assert from_yaml == load_tenants_file(str(json_path))
    assert from_yaml.tenants["team-a"].rights == frozenset({"inference", "shared-memory"})
    (tmp_path / "tenants.yml").write_text(yaml.safe_dump(TENANTS, sort_keys=False))
    assert load_tenants_file(str(tmp_path / "tenants.yml")) == from_yaml


def test_yaml_errors_name_the_line_and_objects_are_never_built(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants:\n  a:\n    keys: [unclosed-key-1\n    models: [x]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML at line \d+, column \d+"):
        load_tenants_file(str(bad))
    # A Python tag would run code under yaml.load; safe_load refuses to build it.
    evil = tmp_path / "evil.yaml"
    evil.write_text("tenants: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ValueError, match=r"evil\.yaml: not valid YAML at line 1"):
        load_tenants_file(str(evil))
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
    # Validation after parsing reports the same errors as for JSON.
    wrong = tmp_path / "wrong.yml"
    wrong.write_text("tenants:\n  a:\n    keys: [key-aaaa-1]\n    rights: [fly]\n")
    with pytest.raises(ValueError, match=r"wrong\.yml: tenant 'a': unknown right\(s\) \['fly'\]"):
        load_tenants_file(str(wrong))


@pytest.mark.parametrize("text, expected", [
    ("tenants:\n  a: {keys: [k-aaaa-1]\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must hold a mapping"),
])
def test_malformed_yaml_stops_start_up_with_a_clear_error(tmp_path, leak_check, text, expected):
    repo = tmp_path / "repo"
    repo.mkdir()
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "tritonpy.frontends.cli", "--model-repository", str(repo),
         "--tenants-config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--tenants-config" in done.stderr and expected in done.stderr and str(path) in done.stderr
    assert "Traceback" not in done.stderr


# --- served end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tenants_yaml")
    repo = root / "repo"
    for name in ("alpha", "beta", "secret"):
        python_model(repo, name, "out = x + 1", config=FP32_IO)
    path = root / "tenants.yaml"
    path.write_text(YAML_TEXT)
    with serve(repo, "--tenants-config", str(path)) as proc:
        yield proc
    assert all(key not in proc.output() for key in KEYS.values()), "an API key was logged"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_yaml_tenants_decide_access(server, protocol, leak_check):
    client = make_client(server, protocol)
    codes = CODES[protocol]
    # 401: no key, an unknown key.
    assert failure(lambda: infer(client, protocol, "alpha", None))[0] == codes["unauth"]
    assert failure(lambda: infer(client, protocol, "alpha", auth(protocol, "not-a-real-key-000")))[0] \
        == codes["unauth"]
    # 403: a key without the right.
    assert failure(lambda: infer(client, protocol, "alpha", auth(protocol, "reader")))[0] == codes["denied"]
    assert failure(lambda: client.get_inference_statistics(headers=auth(protocol, "team-a")))[0] \
        == codes["denied"]
    # Granted, and visibility: a hidden model answers exactly as one that does not exist.
    team_a, team_b = auth(protocol, "team-a"), auth(protocol, "team-b")
    assert float(infer(client, protocol, "alpha", team_a).as_numpy("OUTPUT0")[0]) == 2.0
    assert float(infer(client, protocol, "beta", team_b).as_numpy("OUTPUT0")[0]) == 2.0
    hidden = failure(lambda: infer(client, protocol, "beta", team_a))
    unknown = failure(lambda: infer(client, protocol, "nosuch", team_a))
    assert hidden[0] == codes["notfound"]
    assert hidden[1].replace("beta", "X") == unknown[1].replace("nosuch", "X")
    index = client.get_model_repository_index(headers=team_b)
    seen = {m["name"] for m in index} if protocol == "http" else {m.name for m in index.models}
    assert seen == {"alpha", "beta"}


# --- hot reload ----------------------------------------------------------------------------------
KEY_NEW = "yaml-new-key-0001"


def http_code(server: ServerProcess, key: str) -> str:
    client = make_client(server, "http")
    try:
        infer(client, "http", "alpha", {"Authorization": f"Bearer {key}"})
        return "200"
    except InferenceServerException as exc:
        return str(exc.status())


def test_a_yaml_rewrite_is_reloaded_without_restart(tmp_path, leak_check):
    repo = tmp_path / "repo"
    python_model(repo, "alpha", "out = x + 1", config=FP32_IO)
    path = tmp_path / "tenants.yml"
    path.write_text("tenants:\n  old:\n    keys: [old-key-00001]\n    models: [alpha]\n    rights: [inference]\n")
    with ServerProcess(repo, "--tenants-config", str(path)) as proc:
        assert http_code(proc, "old-key-00001") == "200" and http_code(proc, KEY_NEW) == "401"
        tmp = tmp_path / "tenants.tmp"
        tmp.write_text(f"# rotated\ntenants:\n  new:\n    keys: [{KEY_NEW}]\n    models: [alpha]\n"
                       "    rights: [inference]\n")
        os.replace(tmp, path)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        deadline = time.monotonic() + 10
        while http_code(proc, KEY_NEW) != "200":
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        assert http_code(proc, "old-key-00001") == "401"
        # A broken YAML rewrite is logged with its line and the last good configuration stays.
        path.write_text("tenants:\n  new: [unclosed\n")
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        deadline = time.monotonic() + 10
        while "not valid YAML at line" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        assert http_code(proc, KEY_NEW) == "200"
    assert proc.proc.returncode == 0, proc.output()
    assert KEY_NEW not in proc.output()
