"""/metrics as Triton prints it (issue 19): custom metrics a Python model defines with
`pb_utils.MetricFamily` (as upstream's custom_metrics example does) exported with HELP/TYPE and
their labels, summed over instances; and labels in prometheus-cpp's order (sorted, `le` last)."""
from __future__ import annotations

import textwrap
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.server_process import ServerProcess

IO = """
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

COUNTING = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.family = pb_utils.MetricFamily(
            name="requests_process_latency_ns",
            description="Cumulative time spent processing requests",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.metric = self.family.Metric(labels={"model": "counting", "version": "1"})
        self.gauge = pb_utils.MetricFamily(
            name="queue_depth", description="Items waiting", kind=pb_utils.MetricFamily.GAUGE
        ).Metric(labels={"stage": "pre"})
        self.hist = pb_utils.MetricFamily(
            name="value_seen", description="Values seen", kind=pb_utils.MetricFamily.HISTOGRAM
        ).Metric(labels={}, buckets=[1.0, 10.0])

    def execute(self, requests):
        out = []
        for req in requests:
            n = int(pb_utils.get_input_tensor_by_name(req, "IN").as_numpy()[0])
            self.metric.increment(n)
            self.gauge.set(n)
            self.hist.observe(n)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([n], dtype=np.int32))]))
        return out
"""

FAILS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        raise pb_utils.TritonModelException("always")
"""


def _model(repo, name, code, count):
    d = repo / name
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\n{IO}\ninstance_group [ {{ count: {count} kind: KIND_CPU }} ]\n'
    )
    (d / "1" / "model.py").write_text(textwrap.dedent(code))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("custom_metrics")
    _model(repo, "counting", COUNTING, 2)
    _model(repo, "fails", FAILS, 1)
    with ServerProcess(repo) as proc:
        yield proc
    assert proc.proc.returncode == 0, proc.output()


def _scrape(server) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode().splitlines()


def _infer(client, model, n):
    inp = httpclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], dtype=np.int32))
    return client.infer(model, [inp])


def _eventually(server, line: str) -> list[str]:
    """The operations travel apart from the responses: allow them a moment to arrive."""
    deadline = time.monotonic() + 10
    while True:
        lines = _scrape(server)
        if line in lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_custom_metrics_are_exported(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=4)
    pending = [client.async_infer("counting", [_in(n)]) for n in (3, 4, 20)]
    for p in pending:
        p.get_result()
    lines = _eventually(server, 'requests_process_latency_ns{model="counting",version="1"} 27.0')
    assert "# HELP requests_process_latency_ns Cumulative time spent processing requests" in lines
    assert "# TYPE requests_process_latency_ns counter" in lines
    # Both instances' increments land on one series, as in Triton.
    assert 'requests_process_latency_ns{model="counting",version="1"} 27.0' in lines
    assert "# TYPE queue_depth gauge" in lines
    assert any(line.startswith('queue_depth{stage="pre"} ') for line in lines)
    assert "# TYPE value_seen histogram" in lines
    for expected in ('value_seen_bucket{le="1.0"} 0.0', 'value_seen_bucket{le="10.0"} 2.0',
                     'value_seen_bucket{le="+Inf"} 3.0', "value_seen_count 3.0", "value_seen_sum 27.0"):
        assert expected in lines, expected
    client.close()


def _in(n):
    inp = httpclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([n], dtype=np.int32))
    return inp


def test_failure_labels_in_tritons_order(server, leak_check):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException):
        _infer(client, "fails", 1)
    lines = _scrape(server)
    assert 'nv_inference_request_failure{model="fails",reason="BACKEND",version="1"} 1.0' in lines
    client.close()
