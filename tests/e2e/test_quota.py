"""Tenant quotas: token bucket and in-flight/queue-share logic (pure), then 429 / RESOURCE_EXHAUSTED
with Retry-After from a real server, and the `reason` label in the metrics."""
from __future__ import annotations

import concurrent.futures
import json
import urllib.error
import urllib.request

import grpc
import pytest

from support.model_builders import FP32_IO, python_model
from support.servers import serve
from tritonpy.core.errors import ErrorCode
from tritonpy.core.tenancy.quota import (REASON_IN_FLIGHT, REASON_QUEUE_SHARE, REASON_RATE, QuotaBook, QuotaExceeded,
                                 TokenBucket)
from tritonpy.core.tenancy.tenants import Quota, Tenant
from tritonpy.proto import grpc_service_pb2 as pb
from tritonpy.proto import grpc_service_pb2_grpc as pb_grpc


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_burst():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one token came back
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at burst


def test_rate_limit_raises_with_retry_after_and_reason():
    clock = Clock()
    book = QuotaBook(clock)
    tenant = Tenant(name="t", models=("*",), quota=Quota(rate=1.0, burst=2.0))
    for _ in range(2):
        book.admit(tenant, "m", 64).release()
    with pytest.raises(QuotaExceeded) as info:
        book.admit(tenant, "m", 64)
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED and info.value.http_status == 429
    assert info.value.retry_after == 1 and info.value.reason == REASON_RATE
    clock.now += 1.0
    book.admit(tenant, "m", 64).release()


def test_in_flight_cap_and_queue_share():
    book = QuotaBook(Clock())
    capped = Tenant(name="c", models=("*",), quota=Quota(max_in_flight=2))
    held = [book.admit(capped, "m", 64), book.admit(capped, "n", 64)]
    with pytest.raises(QuotaExceeded) as info:
        book.admit(capped, "m", 64)
    assert info.value.reason == REASON_IN_FLIGHT
    held[0].release()
    held[0].release()  # idempotent
    assert book.in_flight("c") == 1
    book.admit(capped, "m", 64).release()

    shared = Tenant(name="s", models=("*",), quota=Quota(queue_share=0.25))
    admitted = [book.admit(shared, "m", 8) for _ in range(2)]  # 25 % of 8 slots
    with pytest.raises(QuotaExceeded) as info:
        book.admit(shared, "m", 8)
    assert info.value.reason == REASON_QUEUE_SHARE
    book.admit(shared, "other", 8).release()  # the share is per model
    for a in admitted:
        a.release()
    assert book.in_flight("s", "m") == 0
    assert book.admit(Tenant(name="free"), "m", 8) is None  # no limits: no bookkeeping at all


# --- end to end ---------------------------------------------------------------------------------
KEY_RATE = "quota-rate-key-01"
KEY_FLIGHT = "quota-flight-key1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("quota")
    repo = root / "repo"
    python_model(repo, "fast", "out = x", config=FP32_IO)
    python_model(repo, "slow", "time.sleep(0.5)\nout = x", config=FP32_IO + "instance_group [ { count: 2 } ]\n")
    path = root / "tenants.json"
    path.write_text(json.dumps({"tenants": {
        "rate": {"keys": [KEY_RATE], "models": ["*"], "rights": ["inference"], "quota": {"rate": 0.2, "burst": 2}},
        "flight": {"keys": [KEY_FLIGHT], "models": ["*"], "rights": ["inference"], "quota": {"max_in_flight": 1}},
    }}))
    with serve(repo, "--tenants-config", str(path)) as proc:
        yield proc


def http_infer(server, model: str, key: str) -> tuple[int, dict, str]:
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/infer", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def grpc_infer(server, model: str, key: str):
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer.with_call(request, metadata=(("authorization", f"Bearer {key}"),), timeout=30)
            return grpc.StatusCode.OK, {}
        except grpc.RpcError as err:
            return err.code(), dict(err.trailing_metadata() or ())


def failure_count(server, model: str, reason: str, key: str) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("nv_inference_request_failure{") and f'model="{model}"' in line \
                and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_rate_quota_answers_429_with_retry_after_on_both_protocols(server):
    # Burst 2, then 0.2 requests/s: the third request in a row is over quota.
    assert http_infer(server, "fast", KEY_RATE)[0] == 200
    assert grpc_infer(server, "fast", KEY_RATE)[0] is grpc.StatusCode.OK
    status, headers, body = http_infer(server, "fast", KEY_RATE)
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    assert "quota" in json.loads(body)["error"]
    code, trailing = grpc_infer(server, "fast", KEY_RATE)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(trailing["retry-after"]) >= 1
    assert failure_count(server, "fast", REASON_RATE, KEY_RATE) == 2
    # The other tenant is not affected.
    assert http_infer(server, "fast", KEY_FLIGHT)[0] == 200


def test_in_flight_quota_on_a_slow_model(server):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(http_infer, server, "slow", KEY_FLIGHT) for _ in range(4)]
        statuses = sorted(f.result()[0] for f in futures)
    # One at a time for this tenant: with four sent together, at least one was refused and one served.
    assert statuses[0] == 200 and statuses[-1] == 429
    assert failure_count(server, "slow", REASON_IN_FLIGHT, KEY_FLIGHT) == statuses.count(429)
    assert http_infer(server, "slow", KEY_FLIGHT)[0] == 200
