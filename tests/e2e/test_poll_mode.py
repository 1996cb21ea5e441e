"""Poll mode end to end: the server rescans its repository every second and applies new models, new
versions (under the version policy), removed models and changed configurations; a broken change
keeps the old model serving; the explicit load/unload API is refused."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.server_process import ServerProcess
from support.servers import serve
from test_model_management import grpc_infer, http_infer, param_config, param_model

pytestmark = pytest.mark.timeout(180)


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rows(client: httpclient.InferenceServerClient, name: str) -> list[tuple[str, str]]:
    return [(r.get("version", ""), r.get("state", "")) for r in client.get_model_repository_index() if r["name"] == name]


def place(staging: Path, target: Path) -> None:
    """Move a finished folder into the repository in one step (a poll never sees half of it)."""
    os.rename(staging, target)


def rewrite(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def workers(proc: ServerProcess) -> set[int]:
    return {p.pid for p in psutil.Process(proc.proc.pid).children(recursive=True)}


@pytest.fixture
def poll_server(tmp_path, leak_check):
    repo = tmp_path / "repo"
    repo.mkdir()
    param_model(repo, "a", OFFSET="1")
    pinned = param_model(repo, "pinned", OFFSET="0")
    (pinned / "config.pbtxt").write_text(
        'name: "pinned"\nbackend: "python"\nversion_policy: { specific: { versions: [ 1 ] } }\n' + param_config())
    with serve(repo, "--model-control-mode=poll", "--repository-poll-secs=1") as proc:
        proc.repo_path = repo
        proc.staging = tmp_path / "staging"
        proc.staging.mkdir()
        proc.http = httpclient.InferenceServerClient(proc.http_url)
        yield proc
        proc.http.close()


def test_explicit_api_is_refused_in_poll_mode(poll_server):
    for call in (lambda: poll_server.http.load_model("a"), lambda: poll_server.http.unload_model("a")):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "503"
        assert info.value.message() == "explicit model load / unload is not allowed if polling is enabled"
    client = grpcclient.InferenceServerClient(poll_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("a")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "explicit model load / unload is not allowed if polling is enabled" in info.value.message()
    finally:
        client.close()


def test_poll_picks_up_new_model_new_version_changes_and_removals(poll_server):
    http = poll_server.http
    assert rows(http, "a") == [("1", "READY")]
    # settled: nothing changes between polls (no reload loop)
    before = workers(poll_server)
    time.sleep(2.5)
    assert workers(poll_server) == before

    # a new model folder is loaded
    param_model(poll_server.staging, "b", OFFSET="2")
    place(poll_server.staging / "b", poll_server.repo_path / "b")
    wait_for(lambda: rows(http, "b") == [("1", "READY")], what="model b READY")
    np.testing.assert_allclose(http_infer(poll_server.http_url, "b", [1]), [3])

    # a new version folder: the default policy (latest 1) serves version 2 instead of 1
    shutil.copytree(poll_server.repo_path / "a" / "1", poll_server.staging / "a2")
    place(poll_server.staging / "a2", poll_server.repo_path / "a" / "2")
    wait_for(lambda: rows(http, "a") == [("2", "READY")], what="version 2 of a")
    assert http.is_model_ready("a", "2") and not http.is_model_ready("a", "1")
    # ... while a 'specific: [1]' policy ignores it
    shutil.copytree(poll_server.repo_path / "pinned" / "1", poll_server.staging / "p2")
    place(poll_server.staging / "p2", poll_server.repo_path / "pinned" / "2")

    # a changed config.pbtxt is reloaded
    rewrite(poll_server.repo_path / "a" / "config.pbtxt", 'name: "a"\nbackend: "python"\n' + param_config(OFFSET="5"))
    wait_for(lambda: float(http_infer(poll_server.http_url, "a", [1])[0]) == 6.0, what="reloaded config of a")
    assert rows(http, "pinned") == [("1", "READY")]

    # a removed model is unloaded
    shutil.rmtree(poll_server.repo_path / "b")
    wait_for(lambda: not rows(http, "b"), what="model b removed")
    assert not http.is_model_ready("b")
    assert rows(http, "a") == [("2", "READY")]


def test_poll_failed_reload_keeps_the_old_model(poll_server):
    http = poll_server.http
    rewrite(poll_server.repo_path / "a" / "config.pbtxt", 'name: "a"\nbackend: "python"\nmax_batch_size: oops\n')
    wait_for(lambda: any(r["name"] == "a" and r.get("reason") for r in http.get_model_repository_index()),
             what="the failed reload reported")
    row = [r for r in http.get_model_repository_index() if r["name"] == "a"][0]
    assert row["state"] == "READY" and row["version"] == "1" and "model 'a'" in row["reason"]
    client = grpcclient.InferenceServerClient(poll_server.grpc_url)
    try:
        np.testing.assert_allclose(grpc_infer(client, "a", [1]), [2])
    finally:
        client.close()
    # a broken model.py in a new version: version 1 keeps serving
    staged = poll_server.staging / "a3"
    staged.mkdir()
    (staged / "model.py").write_text("def broken(:\n")
    rewrite(poll_server.repo_path / "a" / "config.pbtxt", 'name: "a"\nbackend: "python"\n' + param_config(OFFSET="1"))
    place(staged, poll_server.repo_path / "a" / "3")
    wait_for(lambda: "SyntaxError" in ([r for r in http.get_model_repository_index() if r["name"] == "a"][0]
                                       .get("reason", "")), what="the broken version reported")
    assert rows(http, "a") == [("1", "READY")]
    np.testing.assert_allclose(http_infer(poll_server.http_url, "a", [1]), [2])


def test_fingerprints_see_changes_but_not_pycache(tmp_path):
    from tritonpy.core.repository.poller import model_fingerprints

    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text("a")
    (model / "1" / "model.py").write_text("x")
    first = model_fingerprints(model, {1: model / "1"})
    (model / "1" / "__pycache__").mkdir()
    (model / "1" / "__pycache__" / "model.cpython.pyc").write_bytes(b"\0")
    assert model_fingerprints(model, {1: model / "1"}) == first
    (model / "1" / "model.py").write_text("xy")
    changed = model_fingerprints(model, {1: model / "1"})
    assert changed[0] == first[0] and changed[1][1] != first[1][1]  # only version 1 changed
    (model / "labels.txt").write_text("l")
    assert model_fingerprints(model, {1: model / "1"})[0] != first[0]


def test_same_except_counts():
    from tritonpy.core.model.version import same_except_counts
    from tritonpy.proto import model_config_pb2 as mc

    a = mc.ModelConfig(name="m", instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)])
    b = mc.ModelConfig()
    b.CopyFrom(a)
    b.instance_group[0].count = 4
    assert same_except_counts(a, b)
    b.max_batch_size = 2
    assert not same_except_counts(a, b)
    c = mc.ModelConfig()
    c.CopyFrom(a)
    c.instance_group.add(count=1)
    assert not same_except_counts(a, c)


def test_poll_removing_a_composing_model_unloads_its_ensemble(tmp_path, leak_check):
    from support.ensemble_models import FP32_V, SCALE_CONFIG, ensemble, step
    from support.model_builders import python_model

    repo = tmp_path / "repo"
    repo.mkdir()
    python_model(repo, "double", "out = (x * 2).astype(np.float32)", config=SCALE_CONFIG)
    ensemble(repo, "ens", [step("double", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})],
             inputs={"IN": FP32_V}, outputs={"OUT": FP32_V})
    with ServerProcess(repo, "--model-control-mode=poll", "--repository-poll-secs=1") as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        assert client.is_model_ready("ens")
        staging = tmp_path / "gone"
        os.rename(repo / "double", staging)
        wait_for(lambda: not client.is_model_ready("ens"), what="the ensemble to be unloaded with its step")
        assert not client.is_model_ready("double")
        time.sleep(2.5)  # a few polls without the model: the ensemble's retries fail meanwhile
        # The model comes back: the ensemble is tried again and serves.
        os.rename(staging, repo / "double")
        wait_for(lambda: client.is_model_ready("ens"), what="the ensemble to come back")
        client.close()
