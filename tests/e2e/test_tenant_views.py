"""Per-tenant views: one sweep of every endpoint, on HTTP and gRPC, as tenant A after tenant B has
used the server. Nothing of B (its model names, its region, its error texts, its trace settings)
reaches A; a call that names B's model or region answers exactly as one naming a thing that does
not exist; and the operator's key sees B's things. (Streaming and generate under the same rules:
tests/e2e/test_tenants_e2e.py.)
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

from support.leaks import _settle, child_pids, shm_names
from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess

SECRET = "B-SECRET-7731"
KEYS = {"ops": "ops-key-00000001", "alpha": "alpha-key-000001", "bravo": "bravo-key-000001"}
ALL_RIGHTS = ["inference", "model-control", "shared-memory", "statistics", "logging", "trace"]
TENANTS = {"tenants": {
    "ops": {"keys": [KEYS["ops"]], "models": ["*"], "rights": ALL_RIGHTS},
    "alpha": {"keys": [KEYS["alpha"]], "models": ["alpha_*"], "rights": ALL_RIGHTS},
    "bravo": {"keys": [KEYS["bravo"]], "models": ["bravo_*"], "rights": ALL_RIGHTS},
}}
# What of B must never reach A: the tenant's name, its models' and region's prefix, its secret.
MARKERS = ("bravo", SECRET)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    repo = root / "repo"
    python_model(repo, "alpha_model", "out = x + 1", config=FP32_IO)
    python_model(repo, "bravo_model", f"if x[0] < 0: raise pb_utils.TritonModelException('{SECRET}')\nout = x + 2",
                 config=FP32_IO)
    python_model(repo, "bravo_broken", "out = x", config=FP32_IO, initialize=f"raise RuntimeError('{SECRET}')")
    tenants_file = root / "tenants.json"
    tenants_file.write_text(json.dumps(TENANTS))
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # tritonclient's shm helpers start it: not a leak (see conftest)
    shm_before, kids_before = shm_names(), child_pids()  # leaks checked around the whole server
    with ServerProcess(repo, "--tenants-config", str(tenants_file), "--allow-client-shm=true",
                       "--model-control-mode=explicit", "--load-model=alpha_model",
                       "--load-model=bravo_model") as proc:
        region = shm.create_shared_memory_region("bravo_region", "/views_test_bravo_region", 64)
        try:
            _bravo_uses_the_server(proc)
            yield proc
        finally:
            shm.destroy_shared_memory_region(region)
    assert proc.proc.returncode == 0, proc.output()
    assert not _settle(child_pids, kids_before), "child processes leaked"
    assert not _settle(shm_names, shm_before), "shared memory leaked"


def headers(protocol: str, who: str) -> dict[str, str]:
    return {("Authorization" if protocol == "http" else "authorization"): f"Bearer {KEYS[who]}"}


def _bravo_uses_the_server(server) -> None:
    """B's activity: inferences (one failing with its secret), a region, trace settings, a failed load."""
    client = httpclient.InferenceServerClient(server.http_url)
    h = headers("http", "bravo")
    for value in (1.0, -1.0):
        try:
            _infer(client, httpclient, "bravo_model", h, value)
        except InferenceServerException as exc:
            assert SECRET in exc.message()
    client.register_system_shared_memory("bravo_region", "/views_test_bravo_region", 64, headers=h)
    client.update_trace_settings("bravo_model", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}, headers=h)
    with pytest.raises(InferenceServerException, match=SECRET):
        client.load_model("bravo_broken", headers=h)
    # Server-wide settings are the operator's: B cannot change what A would see.
    for call in (lambda: client.update_trace_settings(settings={"trace_rate": "7"}, headers=h),
                 lambda: client.update_log_settings({"log_verbose_level": 1}, headers=h),
                 lambda: client.update_trace_settings("bravo_model", {"trace_file": "/tmp/x"}, headers=h)):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert "403" in str(info.value.status()) or "PERMISSION" in str(info.value.status())
    client.close()


def _infer(client, mod, model: str, h, value: float = 1.0):
    inp = mod.InferInput("INPUT0", [2], "FP32")
    inp.set_data_from_numpy(np.full(2, value, dtype=np.float32))
    return client.infer(model, [inp], headers=h).as_numpy("OUTPUT0")


def _text(call) -> str:
    try:
        result = call()
    except InferenceServerException as exc:
        return f"error {exc.status()}: {exc.message()}"
    except urllib.error.HTTPError as exc:
        return f"error {exc.code}: {exc.read().decode(errors='replace')}"
    if hasattr(result, "SerializeToString"):
        from google.protobuf import json_format
        return json_format.MessageToJson(result)
    return json.dumps(result, default=str) if not isinstance(result, (bytes, str)) else str(result)


def _unnamed_calls(server, protocol: str, who: str) -> dict[str, object]:
    """Every endpoint whose answer names no model or region of the caller's choosing."""
    h = headers(protocol, who)
    if protocol == "http":
        c = httpclient.InferenceServerClient(server.http_url)
        return {
            "live": lambda: c.is_server_live(headers=h), "ready": lambda: c.is_server_ready(headers=h),
            "server metadata": lambda: c.get_server_metadata(headers=h),
            "statistics": lambda: c.get_inference_statistics(headers=h),
            "index": lambda: c.get_model_repository_index(headers=h),
            "system shm status": lambda: c.get_system_shared_memory_status(headers=h),
            "cuda shm status": lambda: c.get_cuda_shared_memory_status(headers=h),
            "trace settings": lambda: c.get_trace_settings(headers=h),
            "log settings": lambda: c.get_log_settings(headers=h),
            "metrics": lambda: _metrics(server, who),
            "own model": lambda: _infer(c, httpclient, "alpha_model", h).tolist() if who != "bravo" else None,
        }
    c = grpcclient.InferenceServerClient(server.grpc_url)
    return {
        "live": lambda: c.is_server_live(headers=h), "ready": lambda: c.is_server_ready(headers=h),
        "server metadata": lambda: c.get_server_metadata(headers=h, as_json=True),
        "statistics": lambda: c.get_inference_statistics(headers=h, as_json=True),
        "index": lambda: c.get_model_repository_index(headers=h, as_json=True),
        "system shm status": lambda: c.get_system_shared_memory_status(headers=h, as_json=True),
        "cuda shm status": lambda: c.get_cuda_shared_memory_status(headers=h, as_json=True),
        "trace settings": lambda: c.get_trace_settings(headers=h, as_json=True),
        "log settings": lambda: c.get_log_settings(headers=h, as_json=True),
    }


def _named_calls(server, protocol: str, who: str, model: str, region: str) -> dict[str, object]:
    """Every endpoint that takes a model or region name."""
    h = headers(protocol, who)
    mod = httpclient if protocol == "http" else grpcclient
    if protocol == "http":
        c = httpclient.InferenceServerClient(server.http_url)
        extra = {"generate": lambda: _generate(server, who, model)}
        js: dict = {}
    else:
        c = grpcclient.InferenceServerClient(server.grpc_url)
        extra = {}
        js = {"as_json": True}
    return {
        "model ready": lambda: c.is_model_ready(model, headers=h),
        "model metadata": lambda: c.get_model_metadata(model, headers=h, **js),
        "model config": lambda: c.get_model_config(model, headers=h, **js),
        "model statistics": lambda: c.get_inference_statistics(model, headers=h, **js),
        "infer": lambda: _infer(c, mod, model, h).tolist(),
        "trace settings": lambda: c.get_trace_settings(model, headers=h, **js),
        "trace update": lambda: c.update_trace_settings(model, {"trace_rate": "5"}, headers=h, **js),
        "unload": lambda: c.unload_model(model, headers=h),
        "load": lambda: c.load_model(model, headers=h),
        "shm status": lambda: c.get_system_shared_memory_status(region, headers=h, **js),
        "shm unregister": lambda: c.unregister_system_shared_memory(region, headers=h),
        **extra,
    }


def _metrics(server, who: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                     headers={"Authorization": f"Bearer {KEYS[who]}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.read().decode()


def _generate(server, who: str, model: str) -> str:
    body = json.dumps({"INPUT0": [1.0, 2.0]}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/generate", data=body,
                                     headers={"Authorization": f"Bearer {KEYS[who]}"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.read().decode()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_nothing_of_b_reaches_a(server, protocol):
    seen = {name: _text(call) for name, call in _unnamed_calls(server, protocol, "alpha").items()}
    for name, text in seen.items():
        assert not any(m in text for m in MARKERS), f"{protocol} {name} shows B to A: {text[:500]}"
    assert "alpha_model" in seen["index"] and "alpha_model" in seen["statistics"]
    # Naming B's model or region answers exactly as naming nothing that exists.
    hidden = {n: _text(c) for n, c in _named_calls(server, protocol, "alpha", "bravo_model", "bravo_region").items()}
    absent = {n: _text(c) for n, c in _named_calls(server, protocol, "alpha", "nosuch_model", "nosuch_region").items()}
    for name in hidden:
        expected = absent[name].replace("nosuch_model", "bravo_model").replace("nosuch_region", "bravo_region")
        assert hidden[name] == expected, f"{protocol} {name}: {hidden[name]!r} != {expected!r}"
        assert SECRET not in hidden[name]
    # ... and changed nothing of B's: its model still serves, its region and trace settings are intact.
    b = httpclient.InferenceServerClient(server.http_url)
    hb = headers("http", "bravo")
    assert _infer(b, httpclient, "bravo_model", hb).tolist() == [3.0, 3.0]
    assert [r["name"] for r in b.get_system_shared_memory_status(headers=hb)] == ["bravo_region"]
    assert b.get_trace_settings("bravo_model", headers=hb)["trace_rate"] == "1"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_operator_sees_everything(server, protocol):
    seen = {name: _text(call) for name, call in _unnamed_calls(server, protocol, "ops").items()}
    assert "bravo_model" in seen["statistics"] and "alpha_model" in seen["statistics"]
    assert "bravo_broken" in seen["index"] and SECRET in seen["index"]  # B's load failure reason
    if protocol == "http":
        assert 'model="bravo_model"' in seen["metrics"]
    hidden = _named_calls(server, protocol, "ops", "bravo_model", "bravo_region")
    assert "TIMESTAMPS" in _text(hidden["trace settings"])
