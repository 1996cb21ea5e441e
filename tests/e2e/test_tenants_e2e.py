"""Every permission decision of the tenants file, over HTTP and gRPC, against a real server.

Three models: `alpha` (team-a and team-b see it), `beta` (only team-b), `secret` (only admin).
An invisible model must answer exactly as a name that does not exist (`nosuch`): same status,
same message, for metadata, config, ready, infer, statistics; the index, the statistics list and a
metrics scrape with the tenant's key leave it out.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from support.servers import serve

KEYS = {
    "admin": "admin-key-0001",
    "team-a": "team-a-key-0001",
    "team-b": "team-b-key-0001",
    "reader": "reader-key-0001",
}
TENANTS = {
    "tenants": {
        "admin": {"keys": [KEYS["admin"]], "models": ["*"],
                  "rights": ["inference", "model-control", "shared-memory", "statistics", "logging", "trace"]},
        "team-a": {"keys": [KEYS["team-a"]], "models": ["alpha"], "rights": ["inference", "shared-memory"]},
        "team-b": {"keys": [KEYS["team-b"]], "models": ["alpha", "be*"],
                   "rights": ["inference", "statistics", "shared-memory"]},
        "reader": {"keys": [KEYS["reader"]], "models": ["alpha"], "rights": []},
    }
}
CODES = {
    "http": {"unauth": "401", "denied": "403", "notfound": "404", "quota": "429"},
    "grpc": {"unauth": "StatusCode.UNAUTHENTICATED", "denied": "StatusCode.PERMISSION_DENIED",
             "notfound": "StatusCode.NOT_FOUND", "quota": "StatusCode.RESOURCE_EXHAUSTED"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tenants")
    repo = root / "repo"
    for name in ("alpha", "beta", "secret"):
        python_model(repo, name, "out = x + 1", config=FP32_IO)
    tenants_file = root / "tenants.json"
    tenants_file.write_text(json.dumps(TENANTS))
    with serve(repo, "--tenants-config", str(tenants_file), "--allow-client-shm=true",
               "--model-control-mode=explicit", "--load-model=*") as proc:
        yield proc
    assert all(key not in proc.output() for key in KEYS.values()), "an API key was logged"


def make_client(server: ServerProcess, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def auth(protocol: str, who: str | None) -> dict[str, str] | None:
    if who is None:
        return None
    key = KEYS.get(who, who)
    return {("Authorization" if protocol == "http" else "authorization"): f"Bearer {key}"}


def infer(client, protocol: str, model: str, headers, value: float = 1.0):
    mod = httpclient if protocol == "http" else grpcclient
    inp = mod.InferInput("INPUT0", [2], "FP32")
    inp.set_data_from_numpy(np.full(2, value, dtype=np.float32))
    return client.infer(model, [inp], headers=headers)


def failure(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


PROTOCOLS = ["http", "grpc"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_missing_or_unknown_key_is_unauthenticated(server, protocol):
    client = make_client(server, protocol)
    codes = CODES[protocol]
    for headers in (None, auth(protocol, "not-a-real-key-000"), {"Authorization" if protocol == "http"
                                                                    else "authorization": "Basic abc"}):
        assert failure(lambda h=headers: infer(client, protocol, "alpha", h))[0] == codes["unauth"]
        assert failure(lambda h=headers: client.get_model_metadata("alpha", headers=h))[0] == codes["unauth"]
        assert failure(lambda h=headers: client.get_model_repository_index(headers=h))[0] == codes["unauth"]
    # Health stays open to probes without a key (the file's default "anonymous": ["health"]).
    assert client.is_server_live() and client.is_server_ready()
    # ... but a keyless probe of a model learns nothing.
    assert client.is_model_ready("alpha") is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_key_without_the_right_is_permission_denied(server, protocol):
    client = make_client(server, protocol)
    denied = CODES[protocol]["denied"]
    reader, team_a = auth(protocol, "reader"), auth(protocol, "team-a")
    assert failure(lambda: infer(client, protocol, "alpha", reader))[0] == denied
    assert failure(lambda: client.get_inference_statistics("alpha", headers=team_a))[0] == denied
    assert failure(lambda: client.get_inference_statistics(headers=team_a))[0] == denied
    assert failure(lambda: client.load_model("alpha", headers=team_a))[0] == denied
    assert failure(lambda: client.unload_model("alpha", headers=team_a))[0] == denied
    assert failure(lambda: client.get_log_settings(headers=team_a))[0] == denied
    assert failure(lambda: client.get_trace_settings(headers=team_a))[0] == denied
    assert failure(lambda: client.get_system_shared_memory_status(headers=reader))[0] == denied
    # A visible model's metadata needs no right beyond seeing it.
    assert client.get_model_metadata("alpha", headers=reader)
    # The allowed calls go through.
    out = infer(client, protocol, "alpha", team_a).as_numpy("OUTPUT0")
    assert out.tolist() == [2.0, 2.0]
    admin = auth(protocol, "admin")
    assert client.get_log_settings(headers=admin)
    assert client.get_inference_statistics("secret", headers=admin)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invisible_model_answers_exactly_as_an_unknown_model(server, protocol):
    client = make_client(server, protocol)
    team_a = auth(protocol, "team-a")
    team_b = auth(protocol, "team-b")
    calls = {
        "metadata": lambda name, h: client.get_model_metadata(name, headers=h),
        "config": lambda name, h: client.get_model_config(name, headers=h),
        "infer": lambda name, h: infer(client, protocol, name, h),
    }
    for what, call in calls.items():
        hidden = failure(lambda c=call: c("secret", team_a))
        unknown = failure(lambda c=call: c("nosuch", team_a))
        assert hidden[0] == unknown[0] == CODES[protocol]["notfound"], what
        assert hidden[1] == unknown[1].replace("nosuch", "secret"), what
        assert "Request for unknown model: 'secret' is not found" in hidden[1], what
    # Statistics of a hidden model, for a tenant that has the statistics right.
    hidden = failure(lambda: client.get_inference_statistics("secret", headers=team_b))
    unknown = failure(lambda: client.get_inference_statistics("nosuch", headers=team_b))
    assert hidden[0] == unknown[0] and hidden[1] == unknown[1].replace("nosuch", "secret")
    assert client.is_model_ready("secret", headers=team_a) is False
    assert client.is_model_ready("alpha", headers=team_a) is True
    # Lists leave hidden models out.
    index = client.get_model_repository_index(headers=team_b)
    rows = index if protocol == "http" else index.models
    names = {r["name"] if protocol == "http" else r.name for r in rows}
    assert names == {"alpha", "beta"}
    stats = client.get_inference_statistics(headers=team_b)
    entries = stats["model_stats"] if protocol == "http" else stats.model_stats
    assert {e["name"] if protocol == "http" else e.name for e in entries} == {"alpha", "beta"}
    admin_index = client.get_model_repository_index(headers=auth(protocol, "admin"))
    admin_rows = admin_index if protocol == "http" else admin_index.models
    assert len(admin_rows) == 3


def scrape(server: ServerProcess, key: str | None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_need_a_key_and_show_only_visible_models(server):
    client = httpclient.InferenceServerClient(server.http_url)
    infer(client, "http", "secret", auth("http", "admin"))
    status, _ = scrape(server, None)
    assert status == 401
    status, _ = scrape(server, "wrong-key-00000")
    assert status == 401
    status, text = scrape(server, KEYS["team-a"])
    assert status == 200
    assert 'model="alpha"' in text and 'model="secret"' not in text and 'model="beta"' not in text
    status, text = scrape(server, KEYS["admin"])
    assert status == 200 and 'model="secret"' in text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_regions_are_per_tenant(server, protocol, leak_check):
    client = make_client(server, protocol)
    team_a, team_b = auth(protocol, "team-a"), auth(protocol, "team-b")
    key = f"/test_tenant_shm_{protocol}"
    key_b = f"/test_tenant_shm_{protocol}_b"
    handle = shm.create_shared_memory_region("region", key, 8)
    handle_b = shm.create_shared_memory_region("region_b", key_b, 8)
    try:
        shm.set_shared_memory_region(handle, [np.array([5.0, 6.0], dtype=np.float32)])
        client.register_system_shared_memory("mine", key, 8, headers=team_a)
        # The other tenant does not see it and may register the same name for itself (own key).
        status_b = client.get_system_shared_memory_status(headers=team_b)
        assert len(status_b) == 0 if protocol == "http" else len(status_b.regions) == 0
        client.register_system_shared_memory("mine", key_b, 8, headers=team_b)
        client.unregister_system_shared_memory("mine", headers=team_b)
        status_a = client.get_system_shared_memory_status(headers=team_a)
        names = [r["name"] for r in status_a] if protocol == "http" else list(status_a.regions)
        assert names == ["mine"]
        # Nor can it use it: the reference answers as an unregistered region, under the client's name.
        mod = httpclient if protocol == "http" else grpcclient
        inp = mod.InferInput("INPUT0", [2], "FP32")
        inp.set_shared_memory("mine", 8)
        code, message = failure(lambda: client.infer("alpha", [inp], headers=team_b))
        assert "mine" in message and "team-" not in message
        out = client.infer("alpha", [inp], headers=team_a).as_numpy("OUTPUT0")
        assert out.tolist() == [6.0, 7.0]
        # Unregister-all of one tenant leaves the other's regions alone.
        client.register_system_shared_memory("theirs", key_b, 8, headers=team_b)
        client.unregister_system_shared_memory(headers=team_a)
        status_b = client.get_system_shared_memory_status(headers=team_b)
        names = [r["name"] for r in status_b] if protocol == "http" else list(status_b.regions)
        assert names == ["theirs"]
        client.unregister_system_shared_memory(headers=team_b)
    finally:
        shm.destroy_shared_memory_region(handle)
        shm.destroy_shared_memory_region(handle_b)


class _Headers:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol

    def __getitem__(self, tenant: str):
        return auth(self.protocol, tenant)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_tenant_cannot_reach_another_tenants_memory_through_its_key(server, protocol, leak_check):
    """The attack: register the other tenant's POSIX key under a region name of one's own, then
    read it as an input or overwrite it as an output. Refused both ways, and the memory is untouched."""
    client = make_client(server, protocol)
    mod = httpclient if protocol == "http" else grpcclient
    denied = CODES[protocol]["denied"]
    # fresh headers per call: tritonclient's HTTP infer() writes its own headers into the dict
    who = _Headers(protocol)
    keys = {"team-a": f"/test_tenant_key_a_{protocol}", "team-b": f"/test_tenant_key_b_{protocol}"}
    values = {"team-a": [5.0, 6.0], "team-b": [7.0, 8.0]}
    handles = {t: shm.create_shared_memory_region(f"h_{t}", keys[t], 16) for t in keys}
    try:
        for tenant, handle in handles.items():
            shm.set_shared_memory_region(handle, [np.array(values[tenant] * 2, dtype=np.float32)])
            client.register_system_shared_memory("own", keys[tenant], 16, headers=who[tenant])
        for thief, victim in (("team-b", "team-a"), ("team-a", "team-b")):
            code, message = failure(
                lambda v=victim, t=thief: client.register_system_shared_memory("stolen", keys[v], 16, headers=who[t]))
            assert code == denied and "another tenant" in message, message
            # nothing registered under the thief's name, so neither a read nor a write can name it
            for as_output in (False, True):
                inp = mod.InferInput("INPUT0", [2], "FP32")
                inp.set_data_from_numpy(np.array([0.0, 0.0], dtype=np.float32))
                outputs = None
                if as_output:
                    out = mod.InferRequestedOutput("OUTPUT0")
                    out.set_shared_memory("stolen", 8)
                    outputs = [out]
                else:
                    inp.set_shared_memory("stolen", 8)
                code, _ = failure(lambda i=inp, o=outputs, t=thief: client.infer("alpha", [i], outputs=o, headers=who[t]))
                assert code in (CODES[protocol]["notfound"], "400", "StatusCode.INVALID_ARGUMENT"), code
        # The owner still reads its own memory, which nobody overwrote.
        for tenant in keys:
            inp = mod.InferInput("INPUT0", [2], "FP32")
            inp.set_shared_memory("own", 8)
            assert client.infer("alpha", [inp], headers=who[tenant]).as_numpy("OUTPUT0").tolist() == [
                v + 1 for v in values[tenant]]
            got = shm.get_contents_as_numpy(handles[tenant], np.float32, [4])
            assert got.tolist() == values[tenant] * 2
        # Unregistering does not free the key for the other tenant while the object is the same one.
        client.unregister_system_shared_memory("own", headers=who["team-a"])
        code, _ = failure(lambda: client.register_system_shared_memory("stolen", keys["team-a"], 16,
                                                                        headers=who["team-b"]))
        assert code == denied
        # Once the owner deleted it, the name is free: a new object under it belongs to its registrant.
        shm.destroy_shared_memory_region(handles.pop("team-a"))
        handles["again"] = shm.create_shared_memory_region("h_again", keys["team-a"], 16)
        client.register_system_shared_memory("reused", keys["team-a"], 16, headers=who["team-b"])
        code, _ = failure(lambda: client.register_system_shared_memory("back", keys["team-a"], 16,
                                                                        headers=who["team-a"]))
        assert code == denied
        client.unregister_system_shared_memory(headers=who["team-b"])
        assert client.is_server_ready()
    finally:
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)


def test_grpc_stream_and_http_generate_follow_the_same_rules(server):
    import queue

    results: queue.Queue = queue.Queue()
    for who, model, expect in (("team-a", "alpha", None), ("team-a", "secret", "unknown model: 'secret'"),
                               ("not-a-real-key-000", "alpha", "API key")):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)),
                            headers=auth("grpc", who))
        inp = grpcclient.InferInput("INPUT0", [2], "FP32")
        inp.set_data_from_numpy(np.ones(2, dtype=np.float32))
        try:
            client.async_stream_infer(model, [inp])
        except InferenceServerException:
            pass  # the server may already have ended the stream (no key): the callback has the error
        result, error = results.get(timeout=20)
        client.stop_stream()
        if expect is None:
            assert error is None and result.as_numpy("OUTPUT0").tolist() == [2.0, 2.0]
        else:
            assert error is not None and expect in error.message(), (who, model, error)
    # HTTP generate goes through the same facade call.
    body = json.dumps({"INPUT0": [1.0, 2.0]}).encode()
    for key, status in ((KEYS["team-a"], 404), ("not-a-real-key-000", 401)):
        request = urllib.request.Request(f"http://{server.http_url}/v2/models/secret/generate", data=body,
                                         method="POST", headers={"Authorization": f"Bearer {key}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == status
