"""Explicit model control end to end: load/unload over HTTP and gRPC with the real tritonclient,
the repository index, overrides, draining unloads, and the error paths with Triton's codes."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import python_model
from support.server_process import ServerProcess
from support.servers import serve

pytestmark = pytest.mark.timeout(180)

PARAM_INIT = """
import json
params = json.loads(args["model_config"]).get("parameters", {})
def knob(key, default):
    return params.get(key, {}).get("string_value", default)
self.offset = float(knob("OFFSET", "0"))
self.exec_sleep = float(knob("EXEC_SLEEP", "0"))
self.mark = knob("MARK", "")  # a file touched when execute() starts (tests wait for it)
time.sleep(float(knob("INIT_SLEEP", "0")))
if knob("FAIL_INIT", ""):
    raise RuntimeError("initialize failed on purpose")
"""


def param_config(*, count: int = 1, max_batch: int = 0, **params: str) -> str:
    """config.pbtxt body (after name/backend) for `param_model`."""
    text = (
        f"max_batch_size: {max_batch}\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        f"instance_group [ {{ count: {count} kind: KIND_CPU }} ]\n"
    )
    for key, value in params.items():
        text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    return text


def param_model(repo: Path, name: str, **kwargs) -> Path:
    """A Python model answering INPUT0 + OFFSET after EXEC_SLEEP seconds (knobs from `parameters`)."""
    return python_model(
        repo, name,
        "if self.mark:\n    open(self.mark, 'a').close()\ntime.sleep(self.exec_sleep)\nout = x + np.float32(self.offset)",
        config=param_config(**kwargs), initialize=PARAM_INIT,
    )


def config_json(name: str, *, count: int = 1, **params: str) -> str:
    """The same configuration as `param_config`, as a load override."""
    return json.dumps({
        "name": name, "backend": "python", "max_batch_size": 0,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "instance_group": [{"count": count, "kind": "KIND_CPU"}],
        "parameters": {k: {"string_value": v} for k, v in params.items()},
    })


def http_infer(url: str, model: str, values: list[float]) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("INPUT0", [len(values)], "FP32")
        inp.set_data_from_numpy(np.array(values, dtype=np.float32))
        return client.infer(model, [inp]).as_numpy("OUTPUT0")
    finally:
        client.close()


def grpc_infer(client: grpcclient.InferenceServerClient, model: str, values: list[float]) -> np.ndarray:
    inp = grpcclient.InferInput("INPUT0", [len(values)], "FP32")
    inp.set_data_from_numpy(np.array(values, dtype=np.float32))
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def http_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def index_of(client: httpclient.InferenceServerClient, name: str) -> list[dict]:
    return [row for row in client.get_model_repository_index() if row["name"] == name]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explicit_repo")
    param_model(root, "simple", OFFSET="1")
    param_model(root, "never")
    param_model(root, "slow", EXEC_SLEEP="1.5", MARK=str(root / "slow.started"))
    param_model(root, "slowinit", INIT_SLEEP="2")
    param_model(root, "broken", FAIL_INIT="yes")
    param_model(root, "ovr_http", OFFSET="1")
    param_model(root, "ovr_grpc", OFFSET="1")
    param_model(root, "grpc_unload")
    return root


@pytest.fixture(scope="module")
def server(repo):
    with serve(repo, "--model-control-mode=explicit", "--load-model=simple", "--exit-timeout-secs=10") as proc:
        proc.repo_path = repo
        proc.http = httpclient.InferenceServerClient(proc.http_url)
        proc.grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        yield proc
        proc.http.close()
        proc.grpc.close()


def test_explicit_startup_loads_only_the_named_model(server):
    rows = {row["name"]: row for row in server.http.get_model_repository_index()}
    assert rows["simple"] == {"name": "simple", "version": "1", "state": "READY", "reason": ""}
    assert rows["never"] == {"name": "never"}  # in the repository, never loaded
    grpc_rows = {m.name: m for m in server.grpc.get_model_repository_index().models}
    assert grpc_rows["simple"].state == "READY" and grpc_rows["simple"].version == "1"
    assert grpc_rows["never"].state == "" and grpc_rows["never"].version == ""
    assert server.http.is_model_ready("simple") and not server.http.is_model_ready("never")
    np.testing.assert_allclose(http_infer(server.http_url, "simple", [1, 2]), [2, 3])


def test_ready_filter_lists_only_ready_versions(server):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        response = client._post("v2/repository/index", json.dumps({"ready": True}), None, None)
        rows = json.loads(response.read())
        bad = client._post("v2/repository/index", json.dumps({"ready": "yes"}), None, None)
        assert bad.status_code == 400
    finally:
        client.close()
    assert rows and all(r["state"] == "READY" for r in rows)
    assert "never" not in {r["name"] for r in rows} and "simple" in {r["name"] for r in rows}
    from tritonclient.grpc import service_pb2

    reply = server.grpc._client_stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert reply.models and all(m.state == "READY" for m in reply.models)
    assert "never" not in {m.name for m in reply.models}
    everything = server.grpc.get_model_repository_index().models  # tritonclient sends ready=false
    assert {"simple", "never"} <= {m.name for m in everything}


def test_load_unknown_model_is_400_and_invalid_argument(server):
    err = http_error(lambda: server.http.load_model("no_such_model"))
    assert err.status() == "400"
    assert err.message() == "failed to load 'no_such_model', failed to poll from model repository"
    with pytest.raises(InferenceServerException) as info:
        server.grpc.load_model("no_such_model")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to load 'no_such_model', failed to poll from model repository" in info.value.message()


def test_unload_of_a_model_never_served_is_400(server):
    err = http_error(lambda: server.http.unload_model("never"))
    assert err.status() == "400"
    assert err.message() == "failed to unload 'never', Model to be unloaded has not been served"
    with pytest.raises(InferenceServerException) as info:
        server.grpc.unload_model("no_such_model")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Model to be unloaded has not been served" in info.value.message()


def test_bad_config_override_is_400(server):
    err = http_error(lambda: server.http.load_model("never", config="{not json"))
    assert err.status() == "400"
    assert "failed to parse model configuration JSON" in err.message()
    with pytest.raises(InferenceServerException) as info:
        server.grpc.load_model("never", config='{"max_batch_size": "many"}')
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to parse model configuration JSON" in info.value.message()
    # Triton's prefix for every load failure, which scripts match on.
    assert info.value.message().startswith("failed to load 'never'")
    err = http_error(lambda: server.http.load_model("never", config=config_json("other_name")))
    assert err.status() == "400" and "does not match the directory name" in err.message()
    assert not server.http.is_model_ready("never")


def test_wrong_version_string_is_tritons_error(server):
    with pytest.raises(InferenceServerException) as info:
        server.grpc.get_model_metadata("simple", model_version="abc")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == "failed to get model version from specified version string 'abc'"


def test_file_override_needs_config_and_valid_base64(server):
    err = http_error(lambda: server.http.load_model("never", files={"file:1/model.py": b"x = 1\n"}))
    assert err.status() == "400" and "file overrides require a 'config' parameter" in err.message()
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        body = json.dumps({"parameters": {"config": config_json("never"), "file:1/model.py": "%%%not base64"}})
        response = client._post("v2/repository/models/never/load", body, None, None)
        assert response.status_code == 400
        assert "base64" in json.loads(response.read())["error"]
    finally:
        client.close()


def _times(k: int) -> bytes:
    """model.py for an override: OUTPUT0 = INPUT0 * k."""
    return (
        "import numpy as np\nimport triton_python_backend_utils as pb_utils\n\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        out = []\n"
        "        for r in requests:\n"
        "            x = pb_utils.get_input_tensor_by_name(r, 'INPUT0').as_numpy()\n"
        f"            out.append(pb_utils.InferenceResponse([pb_utils.Tensor('OUTPUT0', x * np.float32({k}))]))\n"
        "        return out\n"
    ).encode()


def test_file_override_is_materialised_and_served(server):
    server.http.load_model("ovr_http", config=config_json("ovr_http"), files={"file:1/model.py": _times(3)})
    np.testing.assert_allclose(http_infer(server.http_url, "ovr_http", [1, 2]), [3, 6])
    server.grpc.load_model("ovr_grpc", config=config_json("ovr_grpc"), files={"file:1/model.py": _times(5)})
    np.testing.assert_allclose(grpc_infer(server.grpc, "ovr_grpc", [1, 2]), [5, 10])
    # a plain load goes back to the repository's files
    server.http.load_model("ovr_http")
    np.testing.assert_allclose(http_infer(server.http_url, "ovr_http", [1, 2]), [2, 3])


def test_failed_load_shows_unavailable_with_reason(server):
    err = http_error(lambda: server.http.load_model("broken"))
    assert err.status() == "400"
    assert "initialize failed on purpose" in err.message()
    rows = index_of(server.http, "broken")
    assert len(rows) == 1 and rows[0]["state"] == "UNAVAILABLE"
    assert "initialize failed on purpose" in rows[0]["reason"]
    assert "broken" not in {r.name for r in server.grpc.get_model_repository_index().models if r.state == "READY"}
    with pytest.raises(InferenceServerException) as info:
        server.grpc.load_model("broken")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "initialize failed on purpose" in info.value.message()


def test_loading_state_is_visible_while_initialize_runs(server):
    seen: list[str] = []
    loader = threading.Thread(target=lambda: httpclient.InferenceServerClient(server.http_url).load_model("slowinit"))
    loader.start()
    deadline = time.monotonic() + 30
    while loader.is_alive() and time.monotonic() < deadline:
        for m in server.grpc.get_model_repository_index().models:
            if m.name == "slowinit" and m.state:
                seen.append(m.state)
        time.sleep(0.05)
    loader.join()
    assert "LOADING" in seen
    assert index_of(server.http, "slowinit")[0]["state"] == "READY"


def test_unload_lets_in_flight_requests_finish_and_refuses_new_ones(server):
    server.http.load_model("slow")
    results: dict[str, object] = {}

    def in_flight():
        try:
            results["out"] = http_infer(server.http_url, "slow", [7])
        except Exception as exc:  # noqa: BLE001 - any outcome is recorded for the assertion below
            results["out"] = exc

    def unload():
        client = httpclient.InferenceServerClient(server.http_url)
        client.unload_model("slow", unload_dependents=True)
        results["unloaded_at"] = time.monotonic()
        client.close()

    worker = threading.Thread(target=in_flight)
    worker.start()
    wait_for_file(server.repo_path / "slow.started")  # the request is executing (the model sleeps 1.5 s)
    unloader = threading.Thread(target=unload)
    unloader.start()
    time.sleep(0.3)
    assert [r["state"] for r in index_of(server.http, "slow")] == ["UNLOADING"]
    err = http_error(lambda: http_infer(server.http_url, "slow", [1]))
    assert err.status() == "404"
    assert err.message() == "Request for unknown model: 'slow' has no available versions"
    worker.join()
    unloader.join()
    np.testing.assert_allclose(results["out"], [7])
    assert index_of(server.http, "slow") == [{"name": "slow", "version": "1", "state": "UNAVAILABLE",
                                              "reason": "unloaded"}]
    assert not server.http.is_model_ready("slow")
    server.http.unload_model("slow")  # unloading again is fine: it was served


def test_grpc_unload_with_dependents(server):
    server.grpc.load_model("grpc_unload")
    assert server.grpc.is_model_ready("grpc_unload")
    server.grpc.unload_model("grpc_unload", unload_dependents=True)
    assert not server.grpc.is_model_ready("grpc_unload")
    rows = [m for m in server.grpc.get_model_repository_index().models if m.name == "grpc_unload"]
    assert [(m.state, m.reason) for m in rows] == [("UNAVAILABLE", "unloaded")]
    server.grpc.load_model("grpc_unload")  # and back
    np.testing.assert_allclose(grpc_infer(server.grpc, "grpc_unload", [4]), [4])


def test_repository_name_is_not_supported(server):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        response = client._post("v2/repository/myrepo/models/simple/load", "", None, None)
        assert response.status_code == 501
        assert json.loads(response.read())["error"] == "'repository_name' specification is not supported"
    finally:
        client.close()


def test_load_and_unload_are_refused_in_none_mode(tmp_path, leak_check):
    param_model(tmp_path, "m")
    with ServerProcess(tmp_path) as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        for call in (lambda: http.load_model("m"), lambda: http.unload_model("m")):
            err = http_error(call)
            assert err.status() == "503"
            assert err.message() == "explicit model load / unload is not allowed if polling is enabled"
        for call in (lambda: grpc.load_model("m"), lambda: grpc.unload_model("m")):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert info.value.message().endswith("explicit model load / unload is not allowed if polling is enabled")
        assert http.is_model_ready("m")  # still served
        http.close()
        grpc.close()


def test_load_model_star_loads_everything(tmp_path, leak_check):
    param_model(tmp_path, "a", OFFSET="1")
    param_model(tmp_path, "b", OFFSET="2")
    with ServerProcess(tmp_path, "--model-control-mode=explicit", "--load-model=*") as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        assert {(r["name"], r["state"]) for r in http.get_model_repository_index()} == {("a", "READY"), ("b", "READY")}
        http.unload_model("b")
        assert not http.is_model_ready("b") and http.is_model_ready("a")
        http.close()


# --- reload without downtime ------------------------------------------------------------------------
def _server_pids(proc: ServerProcess) -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process(proc.proc.pid).children(recursive=True)}


@pytest.fixture
def live_server(tmp_path, leak_check):
    param_model(tmp_path, "live", OFFSET="0")
    param_model(tmp_path, "fragile", OFFSET="1")
    with ServerProcess(tmp_path, "--model-control-mode=explicit", "--load-model=live",
                       "--load-model=fragile") as proc:
        proc.repo_path = tmp_path
        proc.http = httpclient.InferenceServerClient(proc.http_url)
        proc.grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        yield proc
        proc.http.close()
        proc.grpc.close()


def test_ten_reloads_under_load_lose_no_request(live_server):
    stop = threading.Event()
    failures: list[str] = []
    outputs: list[float] = []
    sent = [0]

    def http_loop():
        client = httpclient.InferenceServerClient(live_server.http_url)
        inp = httpclient.InferInput("INPUT0", [1], "FP32")
        inp.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        while not stop.is_set():
            try:
                outputs.append(float(client.infer("live", [inp]).as_numpy("OUTPUT0")[0]))
            except Exception as exc:  # noqa: BLE001 - every kind of failure during the reload is counted
                failures.append(f"http: {exc}")
            sent[0] += 1
        client.close()

    def grpc_loop():
        client = grpcclient.InferenceServerClient(live_server.grpc_url)
        while not stop.is_set():
            try:
                outputs.append(float(grpc_infer(client, "live", [1.0])[0]))
            except Exception as exc:  # noqa: BLE001 - every kind of failure during the reload is counted
                failures.append(f"grpc: {exc}")
            sent[0] += 1
        client.close()

    threads = [threading.Thread(target=http_loop), threading.Thread(target=http_loop),
               threading.Thread(target=grpc_loop)]
    for t in threads:
        t.start()
    offsets = {0}
    offset, count = 0, 1
    try:
        for i in range(10):
            if i % 3 != 1:
                count = 3 - count  # 1 <-> 2: an in-place resize
            if i % 3 != 0:
                offset = i  # a changed parameter: a full reload
                offsets.add(offset)
            if i == 5:  # a new version folder: version 2 replaces version 1
                src = live_server.repo_path / "live" / "1" / "model.py"
                (live_server.repo_path / "live" / "2").mkdir()
                (live_server.repo_path / "live" / "2" / "model.py").write_bytes(src.read_bytes())
            before = sent[0]
            live_server.http.load_model("live", config=config_json("live", count=count, OFFSET=str(offset)))
            while sent[0] < before + 3 and not failures:  # traffic flows between reloads
                time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert sent[0] > 30
    assert {o - 1.0 for o in outputs} <= offsets
    assert outputs[-1] == 1.0 + offset
    rows = index_of(live_server.http, "live")
    assert [(r["version"], r["state"]) for r in rows] == [("2", "READY")]
    config = live_server.http.get_model_config("live")
    assert config["instance_group"][0]["count"] == count
    assert config["parameters"]["OFFSET"]["string_value"] == str(offset)


def test_instance_count_change_resizes_in_place(live_server):
    base = _server_pids(live_server)
    live_server.http.load_model("live", config=config_json("live", count=3, OFFSET="0"))
    grown = _server_pids(live_server)
    assert base < grown and len(grown - base) >= 2  # workers added, none replaced
    assert live_server.http.get_model_config("live")["instance_group"][0]["count"] == 3
    live_server.grpc.load_model("live", config=config_json("live", count=1, OFFSET="0"))
    shrunk = _server_pids(live_server)
    assert shrunk < grown and base & shrunk
    np.testing.assert_allclose(grpc_infer(live_server.grpc, "live", [2]), [2])
    live_server.http.load_model("live", config=config_json("live", count=1, OFFSET="5"))
    after = _server_pids(live_server)  # a changed parameter replaces the (one) worker of 'live'
    assert len(after) == len(shrunk) and len(after & shrunk) == len(shrunk) - 1
    np.testing.assert_allclose(grpc_infer(live_server.grpc, "live", [2]), [7])


def test_failed_reload_keeps_the_old_model(live_server):
    bad_py = b"def broken(:\n"
    err = http_error(lambda: live_server.http.load_model(
        "fragile", config=config_json("fragile", OFFSET="1"), files={"file:1/model.py": bad_py}))
    assert err.status() == "400"
    assert err.message().startswith("load failed for model 'fragile': version 1 is at UNAVAILABLE state: ")
    assert "SyntaxError" in err.message()
    np.testing.assert_allclose(http_infer(live_server.http_url, "fragile", [1]), [2])
    rows = index_of(live_server.http, "fragile")
    assert [(r["version"], r["state"]) for r in rows] == [("1", "READY")]
    assert "SyntaxError" in rows[0]["reason"]
    assert live_server.http.is_server_ready()

    with pytest.raises(InferenceServerException) as info:
        live_server.grpc.load_model("fragile", config=config_json("fragile", OFFSET="9", FAIL_INIT="1"))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "initialize failed on purpose" in info.value.message()
    np.testing.assert_allclose(grpc_infer(live_server.grpc, "fragile", [1]), [2])
    # a broken config.pbtxt on disk: the old model still serves
    (live_server.repo_path / "fragile" / "config.pbtxt").write_text('name: "fragile"\nbackend: "python"\nmax_batch_size: oops\n')
    err = http_error(lambda: live_server.http.load_model("fragile"))
    assert err.status() == "400" and "fragile" in err.message()
    np.testing.assert_allclose(http_infer(live_server.http_url, "fragile", [1]), [2])
    # a good load clears the reason
    (live_server.repo_path / "fragile" / "config.pbtxt").write_text(
        'name: "fragile"\nbackend: "python"\n' + param_config(OFFSET="3"))
    live_server.http.load_model("fragile")
    assert index_of(live_server.http, "fragile") == [{"name": "fragile", "version": "1", "state": "READY", "reason": ""}]
    np.testing.assert_allclose(http_infer(live_server.http_url, "fragile", [1]), [4])


# --- graceful shutdown ------------------------------------------------------------------------------
def test_sigterm_readiness_goes_false_and_in_flight_requests_finish(tmp_path, start_server):
    import signal
    import urllib.error
    import urllib.request

    param_model(tmp_path, "slow", EXEC_SLEEP="2", MARK=str(tmp_path / "started"))
    proc = start_server(tmp_path, "--exit-timeout-secs=20")
    result: dict[str, object] = {}

    def in_flight():
        try:
            result["out"] = http_infer(proc.http_url, "slow", [3])
        except Exception as exc:  # noqa: BLE001 - any outcome is recorded for the assertion below
            result["out"] = exc

    def grpc_in_flight():
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        try:
            result["grpc"] = grpc_infer(client, "slow", [4])
        except Exception as exc:  # noqa: BLE001 - any outcome is recorded for the assertion below
            result["grpc"] = exc
        finally:
            client.close()

    threads = [threading.Thread(target=in_flight), threading.Thread(target=grpc_in_flight)]
    for t in threads:
        t.start()
    wait_for_file(tmp_path / "started")
    time.sleep(0.2)  # both requests are in the model (one executes, the other is queued)
    proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    status = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{proc.http_url}/v2/health/ready", timeout=1) as r:
                status = r.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = "refused"
        if status != 200:
            break
        time.sleep(0.02)
    assert status in (400, 503, "refused")
    for t in threads:
        t.join()
    np.testing.assert_allclose(result["out"], [3])
    np.testing.assert_allclose(result["grpc"], [4])
    assert proc.proc.wait(30) == 0


def test_sigterm_during_a_load_leaks_no_worker(tmp_path, start_server):
    import signal

    param_model(tmp_path, "slowinit", INIT_SLEEP="2")
    proc = start_server(tmp_path, "--model-control-mode=explicit")
    outcome: dict[str, object] = {}

    def load():
        client = httpclient.InferenceServerClient(proc.http_url)
        try:
            client.load_model("slowinit")
            outcome["load"] = "ok"
        except Exception as exc:  # noqa: BLE001 - the server may go away before it answers; recorded either way
            outcome["load"] = exc
        finally:
            client.close()

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(0.7)  # initialize() is sleeping in the new worker
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(30) == 0
    loader.join()
    assert "load" in outcome
