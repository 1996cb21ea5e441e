"""Statistics extension over HTTP and gRPC with the real tritonclient: exact counts after known traffic,
batch_stats per batch size, queue + compute <= success, and errors for unknown models."""
from __future__ import annotations

import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.servers import serve
from test_metrics import build_repo, infer_add_sub, send_pyfail_traffic

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("statistics") / "repo")
    with serve(repo) as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        send_pyfail_traffic(client, successes=5, failures=2)
        for _ in range(4):  # sequential: four executions of batch size 3
            infer_add_sub(client, 3)
        yield proc


def _as_ints(obj):
    """Make both protocols comparable: gRPC's JSON renders uint64 as strings and leaves out zero
    and empty fields (proto3), so numbers become ints and zero/empty fields are dropped."""
    if isinstance(obj, dict):
        out = {k: _as_ints(v) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v not in (0, {}, [])}
    if isinstance(obj, list):
        return [_as_ints(v) for v in obj]
    if isinstance(obj, str) and obj.isdigit():
        return int(obj)
    return obj


def _both(server, model: str = "") -> tuple[list, list]:
    http = httpclient.InferenceServerClient(server.http_url).get_inference_statistics(model)
    grpc = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(model, as_json=True)
    return _as_ints(http["model_stats"]), _as_ints(grpc["model_stats"])


def _check_consistent(stats: dict) -> None:
    s = {phase: {"count": 0, "ns": 0, **stats["inference_stats"].get(phase, {})} for phase in PHASES}
    compute = s["compute_input"]["ns"] + s["compute_infer"]["ns"] + s["compute_output"]["ns"]
    assert s["queue"]["ns"] + compute <= s["success"]["ns"]
    assert s["queue"]["count"] == s["compute_infer"]["count"] == s["success"]["count"]
    assert stats["execution_count"] == sum(b["compute_infer"]["count"] for b in stats["batch_stats"])
    assert stats["inference_count"] == sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"])
    now_ms = time.time() * 1000
    assert now_ms - 600_000 < stats["last_inference"] <= now_ms + 1000


def test_exact_counts_over_http_and_grpc(server):
    http, grpc = _both(server, "pyfail")
    assert http == grpc
    [stats] = http
    [raw] = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("pyfail")["model_stats"]
    # Triton's JSON shape over HTTP: every field present, version a string.
    assert (raw["name"], raw["version"]) == ("pyfail", "1")
    assert set(raw) == {"name", "version", "last_inference", "inference_count", "execution_count",
                        "inference_stats", "response_stats", "batch_stats", "memory_usage"}
    assert set(raw["inference_stats"]) == set(PHASES)
    assert stats["inference_count"] == 5 and stats["execution_count"] == 5
    s = stats["inference_stats"]
    counts = {phase: s.get(phase, {}).get("count", 0) for phase in PHASES}
    assert counts == {"success": 5, "fail": 2, "queue": 5, "compute_input": 5, "compute_infer": 5,
                      "compute_output": 5, "cache_hit": 0, "cache_miss": 0}
    assert s["fail"]["ns"] > 0 and s["compute_infer"]["ns"] > 0
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [(1, 5)]
    _check_consistent(stats)


def test_batched_model_batch_stats(server):
    http, grpc = _both(server, "add_sub_onnx")
    assert http == grpc
    [stats] = http
    assert stats["inference_count"] == 12 and stats["execution_count"] == 4
    assert stats["inference_stats"]["success"]["count"] == 4
    assert "fail" not in stats["inference_stats"]  # zero, dropped by _as_ints
    [batch] = stats["batch_stats"]
    assert batch["batch_size"] == 3
    assert {k: batch[k]["count"] for k in ("compute_input", "compute_infer", "compute_output")} == {
        "compute_input": 4, "compute_infer": 4, "compute_output": 4}
    _check_consistent(stats)


def test_all_models_and_explicit_version(server):
    http, grpc = _both(server)
    assert http == grpc
    assert sorted(m["name"] for m in http) == ["add_sub_onnx", "pyfail"]
    client = httpclient.InferenceServerClient(server.http_url)
    versioned = client.get_inference_statistics("pyfail", "1")["model_stats"]
    assert _as_ints(versioned) == [m for m in http if m["name"] == "pyfail"]


def test_unknown_model_is_not_found(server):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as err:
        client.get_inference_statistics("nope")
    assert err.value.status() == "404"
    assert "Request for unknown model: 'nope' is not found" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.get_inference_statistics("pyfail", "7")
    assert err.value.status() in ("400", "404")
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        gclient.get_inference_statistics("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'nope' is not found" in err.value.message()


# --- pure logic ---------------------------------------------------------------------------------------
def test_model_stats_count_successes_per_request_and_batches_per_execution():
    from tritonpy.core.observability.stats import ModelStats

    s = ModelStats("m", "1")
    s.record_batch(3, 10, 100, 20)  # one execution of 3 rows (two requests: 2 rows + 1 row)
    s.record_request(1000, 50, 10, 100, 20)
    s.record_failure(900, "BACKEND")
    d = s.as_dict()
    assert (d["inference_count"], d["execution_count"]) == (3, 1)
    stats = d["inference_stats"]
    assert stats["success"] == {"count": 1, "ns": 1000} and stats["fail"] == {"count": 1, "ns": 900}
    assert stats["queue"] == {"count": 1, "ns": 50} and stats["compute_infer"] == {"count": 1, "ns": 100}
    assert d["batch_stats"] == [{"batch_size": 3, "compute_input": {"count": 1, "ns": 10},
                                 "compute_infer": {"count": 1, "ns": 100}, "compute_output": {"count": 1, "ns": 20}}]
    assert s.failures_by_reason == {"BACKEND": 1}
    # Latency observations are kept only when --metrics-config asks for them.
    assert s.summaries is None and s.first_response is None
