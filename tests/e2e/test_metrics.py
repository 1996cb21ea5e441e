"""Prometheus metrics after known traffic: exact counts, Triton's names, types and label sets.

Every scrape is parsed with prometheus_client's text parser; only the check that counters keep
Triton's names (no `_total` suffix on the wire) looks at the raw text.
"""
from __future__ import annotations

import math
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, crashy_model, python_model
from support.server_process import ServerProcess
from support.servers import examples_module, serve
from tritonpy.core.observability.metrics import DEFAULT_QUANTILES, MetricsConfig
from tritonpy.core.observability.stats import BucketCounts, LatencyWindow

FAIL_ON_NEGATIVE = """
if float(x.reshape(-1)[0]) < 0:
    raise pb_utils.TritonModelException("negative input")
out = x.copy()
"""


def build_repo(repo: Path, *, onnx: bool = True) -> Path:
    """`pyfail` (Python, fails on a negative first element, metric_tags team/tier) and, optionally,
    `add_sub_onnx` (ONNX, max_batch_size 8, dynamic batching) from the examples."""
    python_model(repo, "pyfail", FAIL_ON_NEGATIVE,
                 config=FP32_IO + 'metric_tags { key: "team" value: "alpha" }\n'
                                  'metric_tags { key: "tier" value: "gold" }\n')
    if onnx:
        examples = examples_module()
        staging = repo.parent / (repo.name + "_examples")
        examples.build(staging)
        shutil.copytree(staging / "add_sub_onnx", repo / "add_sub_onnx")
        shutil.rmtree(staging)
    return repo


def infer_fp32(client, model: str, value: float, n: int = 1):
    data = np.full([n], value, dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [n], "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    return client.infer(model, [inp])


def add_sub_inputs(rows: int) -> list:
    a = np.ones([rows, 4], dtype=np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        inp = httpclient.InferInput(name, [rows, 4], "FP32")
        inp.set_data_from_numpy(a, binary_data=True)
        inputs.append(inp)
    return inputs


def infer_add_sub(client, rows: int):
    return client.infer("add_sub_onnx", add_sub_inputs(rows))


def send_pyfail_traffic(client, successes: int = 5, failures: int = 2) -> None:
    for i in range(successes):
        infer_fp32(client, "pyfail", float(i + 1))
    for i in range(failures):
        with pytest.raises(InferenceServerException, match="negative input"):
            infer_fp32(client, "pyfail", -1.0 - i)


def scrape_text(server: ServerProcess, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}{path}", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def scrape(server: ServerProcess) -> dict:
    return {f.name: f for f in text_string_to_metric_families(scrape_text(server))}


def by_model(family, model: str, *, sample: str | None = None) -> dict:
    """{frozenset(other labels): value} of `family`'s samples for `model`."""
    out = {}
    for s in family.samples:
        if s.labels.get("model") == model and (sample is None or s.name == sample):
            rest = frozenset((k, v) for k, v in s.labels.items() if k not in ("model", "version"))
            out[rest] = s.value
    return out


def value(family, model: str, **labels) -> float:
    matches = [s.value for s in family.samples
               if s.labels.get("model") == model and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (family.name, model, labels, family.samples)
    return matches[0]


PYFAIL_TAGS = {"_team": "alpha", "_tier": "gold"}
PER_MODEL = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
             "nv_inference_pending_request_count", "nv_inference_request_duration_us",
             "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
             "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
             "nv_model_load_duration_secs", "tritonpy_worker_restarts")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("metrics") / "repo")
    with serve(repo) as proc:
        yield proc


def test_exact_counts_and_labels_after_known_traffic(server):
    client = httpclient.InferenceServerClient(server.http_url)
    send_pyfail_traffic(client)
    for _ in range(4):  # sequential requests of 3 rows each: 4 executions of batch size 3
        infer_add_sub(client, 3)
    fams = scrape(server)
    types = {name: fams[name].type for name in PER_MODEL}
    assert types == {name: ("gauge" if name in ("nv_inference_pending_request_count", "nv_model_load_duration_secs")
                            else "counter") for name in PER_MODEL}

    # Label sets: model, version, plus `_<tag>` from metric_tags; failures add `reason`.
    for name in PER_MODEL:
        labels = {frozenset(s.labels.items()) for s in fams[name].samples}
        assert labels == {
            frozenset({"model": "pyfail", "version": "1", **PYFAIL_TAGS}.items()),
            frozenset({"model": "add_sub_onnx", "version": "1"}.items()),
        }, name
    failure = fams["nv_inference_request_failure"]
    assert by_model(failure, "pyfail") == {
        frozenset({**PYFAIL_TAGS, "reason": r}.items()): (2.0 if r == "BACKEND" else 0.0)
        for r in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    }
    assert set(by_model(failure, "add_sub_onnx").values()) == {0.0}

    expected = {
        "pyfail": {"nv_inference_request_success": 5, "nv_inference_count": 5, "nv_inference_exec_count": 5},
        "add_sub_onnx": {"nv_inference_request_success": 4, "nv_inference_count": 12, "nv_inference_exec_count": 4},
    }
    for model, counts in expected.items():
        for name, want in counts.items():
            assert value(fams[name], model) == want, (model, name)
        assert value(fams["nv_inference_pending_request_count"], model) == 0
        assert value(fams["tritonpy_worker_restarts"], model) == 0
        assert value(fams["nv_model_load_duration_secs"], model) > 0
        request = value(fams["nv_inference_request_duration_us"], model)
        parts = [value(fams[f"nv_inference_{p}_duration_us"], model)
                 for p in ("queue", "compute_input", "compute_infer", "compute_output")]
        assert request > 0 and value(fams["nv_inference_compute_infer_duration_us"], model) > 0
        assert sum(parts) <= request, (model, parts, request)

    # The executed batch sizes (beyond Triton): four batches of 3.
    batch = fams["tritonpy_inference_batch_size"]
    assert batch.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in batch.samples
               if s.name.endswith("_bucket") and s.labels["model"] == "add_sub_onnx"}
    assert buckets["2.0"] == 0 and buckets["4.0"] == 4 and buckets["+Inf"] == 4
    sums = {s.name: s.value for s in batch.samples if s.labels["model"] == "add_sub_onnx" and "le" not in s.labels}
    assert sums == {"tritonpy_inference_batch_size_count": 4, "tritonpy_inference_batch_size_sum": 12}

    # CPU gauges; no summaries or histograms unless --metrics-config asks for them.
    util = fams["nv_cpu_utilization"].samples[0].value
    total = fams["nv_cpu_memory_total_bytes"].samples[0].value
    used = fams["nv_cpu_memory_used_bytes"].samples[0].value
    assert 0.0 <= util <= 1.0 and 0 < used < total
    assert {fams[n].type for n in ("nv_cpu_utilization", "nv_cpu_memory_total_bytes")} == {"gauge"}
    assert not [n for n in fams if n.endswith(("_summary_us", "_histogram_ms"))]


def test_dynamic_batching_counts_are_consistent(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    before = scrape(server)
    pending = [client.async_infer("add_sub_onnx", add_sub_inputs(1)) for _ in range(16)]
    for p in pending:
        p.get_result()
    after = scrape(server)

    def delta(name: str) -> float:
        return value(after[name], "add_sub_onnx") - value(before[name], "add_sub_onnx")

    assert delta("nv_inference_request_success") == 16
    assert delta("nv_inference_count") == 16
    executions = delta("nv_inference_exec_count")
    assert 1 <= executions <= 16
    stats = client.get_inference_statistics("add_sub_onnx")["model_stats"][0]
    assert int(stats["execution_count"]) == value(after["nv_inference_exec_count"], "add_sub_onnx")
    assert sum(int(b["compute_infer"]["count"]) for b in stats["batch_stats"]) == int(stats["execution_count"])
    assert sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in stats["batch_stats"]) == int(
        stats["inference_count"])


def test_wire_names_and_endpoint(server):
    text = scrape_text(server)
    # Triton's counters carry no `_total` suffix; dashboards query these exact names.
    assert "\nnv_inference_request_success{" in text
    assert not [line for line in text.splitlines() if line.split("{")[0].endswith("_total")]
    assert "# TYPE nv_inference_request_success counter" in text
    assert scrape_text(server, "/metrics/") != ""
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 405


def test_worker_restart_counter_after_crash(tmp_path, leak_check):
    crashy_model(tmp_path, "crashy")
    with ServerProcess(tmp_path) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        infer_fp32(client, "crashy", 1.0)
        with pytest.raises(InferenceServerException):
            infer_fp32(client, "crashy", -1.0)  # the worker calls os._exit
        deadline = time.monotonic() + 30
        while not client.is_model_ready("crashy"):
            assert time.monotonic() < deadline, "crashy did not come back"
            time.sleep(0.05)
        infer_fp32(client, "crashy", 2.0)
        fams = scrape(server)
        assert value(fams["tritonpy_worker_restarts"], "crashy") == 1
        assert value(fams["nv_inference_request_success"], "crashy") == 2
        assert value(fams["nv_inference_request_failure"], "crashy", reason="BACKEND") == 1
        assert value(fams["nv_inference_exec_count"], "crashy") == 2


def test_metrics_config_summaries_and_histograms(tmp_path, leak_check):
    build_repo(tmp_path, onnx=False)
    python_model(tmp_path, "custom_buckets", "out = x.copy()", config=FP32_IO + """
model_metrics {
  metric_control: [ {
    metric_identifier: { family: "nv_inference_first_response_histogram_ms" }
    histogram_options: { buckets: [ 0.001, 60000 ] }
  } ]
}
""")
    args = ["--metrics-config", "summary_latencies=true", "--metrics-config", "summary_quantiles=0.5:0.05,0.9:0.01",
            "--metrics-config", "counter_latencies=false", "--metrics-config", "histogram_latencies=true"]
    with ServerProcess(tmp_path, *args) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        send_pyfail_traffic(client, successes=6, failures=1)
        for i in range(3):
            infer_fp32(client, "custom_buckets", float(i))
        fams = scrape(server)
    assert not [n for n in fams if n.endswith("_duration_us")]  # counter_latencies=false
    assert "nv_inference_request_success" in fams
    for part in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
        fam = fams[f"nv_inference_{part}_summary_us"]
        assert fam.type == "summary"
        samples = [s for s in fam.samples if s.labels["model"] == "pyfail"]
        quantiles = {s.labels["quantile"]: s.value for s in samples if "quantile" in s.labels}
        assert set(quantiles) == {"0.5", "0.9"}
        assert all(s.labels[k] == v for s in samples for k, v in PYFAIL_TAGS.items())
        rest = {s.name: s.value for s in samples if "quantile" not in s.labels}
        assert rest[f"nv_inference_{part}_summary_us_count"] == 6  # successes only
        assert 0 <= quantiles["0.5"] <= quantiles["0.9"] <= rest[f"nv_inference_{part}_summary_us_sum"]
    request_p90 = value(fams["nv_inference_request_summary_us"], "pyfail", quantile="0.9")
    assert request_p90 > 0

    hist = fams["nv_inference_first_response_histogram_ms"]
    assert hist.type == "histogram"
    default = {s.labels["le"]: s.value for s in hist.samples if s.labels["model"] == "pyfail" and "le" in s.labels}
    assert set(default) == {"100.0", "500.0", "2000.0", "5000.0", "+Inf"} and default["+Inf"] == 6
    custom = {s.labels["le"]: s.value for s in hist.samples
              if s.labels["model"] == "custom_buckets" and "le" in s.labels}
    assert custom == {"0.001": 0, "60000.0": 3, "+Inf": 3}


# --- pure logic ---------------------------------------------------------------------------------------
def test_metrics_config_parsing():
    assert MetricsConfig.from_options({}) == MetricsConfig()
    assert MetricsConfig().summary_quantiles == DEFAULT_QUANTILES
    cfg = MetricsConfig.from_options({"summary_latencies": "true", "counter_latencies": "False",
                                      "summary_quantiles": "0.5:0.05,0.99:0.001"})
    assert cfg.summary_latencies and not cfg.counter_latencies
    assert cfg.summary_quantiles == ((0.5, 0.05), (0.99, 0.001))
    for bad in ({"summary_latencies": "maybe"}, {"summary_quantiles": "0.5"}, {"summary_quantiles": "2:0.1"},
                {"colour": "blue"}):
        with pytest.raises(ValueError):
            MetricsConfig.from_options(bad)


def test_latency_window_and_buckets():
    window = LatencyWindow(size=100)
    assert all(math.isnan(v) for v in window.quantiles([0.5]))
    for v in range(1, 201):  # only the last 100 (101..200) stay for quantiles
        window.observe(float(v))
    assert window.count == 200 and window.total == sum(range(1, 201))
    assert window.quantiles([0.0, 0.5, 0.9, 1.0]) == [101.0, 150.0, 190.0, 200.0]
    hist = BucketCounts([10, 1])
    for v in (0.5, 1.0, 5, 10, 11):
        hist.observe(v)
    assert hist.cumulative() == [(1.0, 2), (10.0, 4)] and hist.count == 5 and hist.total == 27.5
