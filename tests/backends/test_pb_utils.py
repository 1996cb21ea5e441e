"""Unit tests of tritonpy's triton_python_backend_utils (pure logic, in-process)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tritonpy.backends.worker import logfmt
from tritonpy.backends.python import pb_utils


# -- data types ---------------------------------------------------------------------------------


def test_type_tables():
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.TRITON_STRING_TO_NUMPY["TYPE_BOOL"] is bool
    assert pb_utils.triton_to_numpy_type(11) is np.float32
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    assert pb_utils.triton_to_numpy_type(14) is None  # BF16: no numpy type
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.dtype("int64")) == 9
    assert pb_utils.numpy_to_triton_type(np.object_) == 13
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.bool_) == 1
    assert pb_utils.numpy_to_triton_type(np.complex64) is None


def test_serialize_and_deserialize_bytes():
    tensor = np.array([[b"ab", "é"], [b"", 7]], dtype=np.object_)
    flat = pb_utils.serialize_byte_tensor(tensor)
    assert flat == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9\x00\x00\x00\x00\x01\x00\x00\x007"
    assert pb_utils.deserialize_bytes_tensor(flat).tolist() == [b"ab", "é".encode(), b"", b"7"]
    assert pb_utils.serialize_byte_tensor(np.array([], dtype=np.object_)) == ()
    assert pb_utils.serialize_byte_tensor(np.zeros(2, np.float32)) is None


# -- Tensor -------------------------------------------------------------------------------------


def test_tensor_basics():
    t = pb_utils.Tensor("x", np.zeros((2, 3), np.float16))
    assert t.name() == "x" and t.shape() == [2, 3] and t.triton_dtype() == 10 and t.is_cpu()
    assert t.as_numpy().dtype == np.float16
    s = pb_utils.Tensor("s", np.array([b"a"], dtype=np.object_))
    assert s.triton_dtype() == 13
    assert pb_utils.Tensor("u", np.array(["text"])).triton_dtype() == 13  # str arrays are BYTES too
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.Tensor("v", np.zeros(2, dtype=[("a", "i4")]))


def test_tensor_reinterprets_bytes_for_an_explicit_type():
    raw = np.array([1.0], np.float32)
    t = pb_utils.Tensor("x", raw.view(np.uint8), 11)
    assert t.as_numpy().dtype == np.float32 and t.as_numpy()[0] == 1.0
    bf16 = pb_utils.Tensor("b", np.array([0x3F80], np.uint16), 14)
    assert bf16.triton_dtype() == 14
    with pytest.raises(pb_utils.TritonModelException, match="BF16"):
        bf16.as_numpy()


def test_dlpack_roundtrip_shares_memory():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = pb_utils.Tensor("x", arr)
    assert t.__dlpack_device__() == (1, 0)
    back = pb_utils.Tensor.from_dlpack("y", t.to_dlpack())  # a bare capsule
    assert back.name() == "y" and np.shares_memory(back.as_numpy(), arr)
    via_protocol = pb_utils.Tensor.from_dlpack("z", t)  # an object with __dlpack__
    np.testing.assert_array_equal(via_protocol.as_numpy(), arr)
    assert np.from_dlpack(t).shape == (2, 3)


def test_dlpack_of_a_read_only_input_exports_a_private_copy():
    arr = np.arange(4, dtype=np.int32)
    arr.flags.writeable = False  # like inputs mapped from shared memory
    t = pb_utils.Tensor("x", arr)
    exported = np.from_dlpack(pb_utils.Tensor.from_dlpack("y", t.to_dlpack()))
    np.testing.assert_array_equal(exported, arr)
    assert not np.shares_memory(exported, arr)
    assert t.as_numpy() is arr


def test_dlpack_rejects_non_contiguous_and_bytes():
    with pytest.raises(pb_utils.TritonModelException, match="C-contiguous"):
        pb_utils.Tensor.from_dlpack("x", np.arange(12, dtype=np.float32).reshape(3, 4).T)
    with pytest.raises(pb_utils.TritonModelException, match="BYTES"):
        pb_utils.Tensor("s", np.array([b"a"], dtype=object)).to_dlpack()


# -- requests, responses, errors ----------------------------------------------------------------


def test_inference_request_accessors_and_unsupported_calls():
    t = pb_utils.Tensor("IN", np.zeros(1, np.int32))
    req = pb_utils.InferenceRequest(
        model_name="other", inputs=[t], requested_output_names=["OUT"], request_id="r1",
        correlation_id="seq-1", flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START, timeout=5,
        parameters={"a": 1, "b": "x", "c": True},
    )
    assert req.inputs() == [t] and req.request_id() == "r1" and req.correlation_id() == "seq-1"
    assert req.flags() == 1 and req.timeout() == 5 and req.requested_output_names() == ["OUT"]
    assert json.loads(req.parameters()) == {"a": 1, "b": "x", "c": True}
    assert req.is_cancelled() is False and req.trace().get_context() is None
    assert pb_utils.get_input_tensor_by_name(req, "IN") is t
    assert pb_utils.get_input_tensor_by_name(req, "nope") is None
    with pytest.raises(pb_utils.TritonModelException, match="BLS"):
        req.exec()  # outside a worker (BLS itself: tests/test_bls.py)
    sender = req.get_response_sender()
    assert sender is req.get_response_sender() and sender.is_cancelled() is False
    with pytest.raises(pb_utils.TritonModelException, match="no response sender"):
        sender.send(pb_utils.InferenceResponse([]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceRequest(parameters={"a": 1.5})


async def test_async_exec_raises_clearly():
    with pytest.raises(pb_utils.TritonModelException, match="BLS"):
        await pb_utils.InferenceRequest(model_name="m").async_exec()


def test_inference_response():
    out = pb_utils.Tensor("OUT", np.ones(1))
    ok = pb_utils.InferenceResponse(output_tensors=[out], parameters={"k": "v"})
    assert not ok.has_error() and ok.error() is None and json.loads(ok.parameters()) == {"k": "v"}
    assert pb_utils.get_output_tensor_by_name(ok, "OUT") is out
    bad = pb_utils.InferenceResponse(error=pb_utils.TritonError("nope", pb_utils.TritonError.NOT_FOUND))
    assert bad.has_error() and bad.error().code() == 2 and bad.error().message() == "nope"
    with pytest.raises(pb_utils.TritonModelException, match="must be a list"):
        pb_utils.InferenceResponse(output_tensors="OUT")
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceResponse(output_tensors=[np.ones(1)])


def test_error_codes_match_triton():
    codes = [pb_utils.TritonError.UNKNOWN, pb_utils.TritonError.INTERNAL, pb_utils.TritonError.NOT_FOUND,
             pb_utils.TritonError.INVALID_ARG, pb_utils.TritonError.UNAVAILABLE, pb_utils.TritonError.UNSUPPORTED,
             pb_utils.TritonError.ALREADY_EXISTS, pb_utils.TritonError.CANCELLED]
    assert codes == list(range(8))
    assert pb_utils.TritonError("m").code() == pb_utils.TritonError.INTERNAL
    assert str(pb_utils.TritonModelException("x")) == "x" and pb_utils.TritonModelException("x").message() == "x"


def test_model_control_is_not_supported_yet():
    for call in (lambda: pb_utils.load_model("m"), lambda: pb_utils.unload_model("m"), lambda: pb_utils.is_model_ready("m")):
        with pytest.raises(pb_utils.TritonModelException, match="not supported yet in tritonpy"):
            call()
    mem = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, 1)
    assert (mem.preferred_memory_type, mem.preferred_device_id) == (pb_utils.TRITONSERVER_MEMORY_GPU, 1)


# -- config helpers -----------------------------------------------------------------------------

CONFIG = {
    "name": "m",
    "max_batch_size": 4,
    "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [3]}],
    "output": [{"name": "OUT", "data_type": "TYPE_INVALID", "dims": []}],
}


def test_config_lookups():
    assert pb_utils.get_input_config_by_name(CONFIG, "IN")["dims"] == [3]
    assert pb_utils.get_output_config_by_name(CONFIG, "OUT")["name"] == "OUT"
    assert pb_utils.get_input_config_by_name(CONFIG, "X") is None
    assert pb_utils.using_decoupled_model_transaction_policy(CONFIG) is False
    assert pb_utils.using_decoupled_model_transaction_policy({"model_transaction_policy": {"decoupled": True}})


def test_model_config_completes_and_merges():
    mc = pb_utils.ModelConfig(json.dumps(CONFIG))
    mc.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [3]})  # same: fine
    mc.add_output({"name": "OUT", "data_type": "TYPE_INT64", "dims": [2]})  # fills the blanks
    mc.add_input({"name": "EXTRA", "data_type": "TYPE_STRING", "dims": [-1], "optional": True})
    mc.set_max_batch_size(8)
    mc.set_dynamic_batching()
    mc.set_model_transaction_policy({"decoupled": False})
    d = mc.as_dict()
    assert d["output"] == [{"name": "OUT", "data_type": "TYPE_INT64", "dims": [2]}]
    assert d["input"][1] == {"name": "EXTRA", "data_type": "TYPE_STRING", "dims": [-1], "optional": True}
    assert d["max_batch_size"] == 8 and d["dynamic_batching"] == {}
    assert d["model_transaction_policy"] == {"decoupled": False}
    assert CONFIG["output"][0]["data_type"] == "TYPE_INVALID"  # the caller's dict is not modified


@pytest.mark.parametrize(
    "action,message",
    [
        (lambda mc: mc.add_input({"name": "IN", "data_type": "TYPE_INT8", "dims": [3]}), "configuration expects datatype TYPE_FP32"),
        (lambda mc: mc.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [4]}), "the model expects dims [4]"),
        (lambda mc: mc.add_input({"name": "IN", "data_type": "TYPE_FP32"}), "missing 'dims'"),
        (lambda mc: mc.add_output({"name": "O", "data_type": "TYPE_FP32", "dims": [1], "optional": True}), "property other than"),
        (lambda mc: mc.set_max_batch_size(2), "configuration specified max_batch_size 4"),
        (lambda mc: mc.set_model_transaction_policy({"stream": True}), "other than 'decoupled'"),
    ],
)
def test_model_config_conflicts_raise(action, message):
    mc = pb_utils.ModelConfig(CONFIG)
    with pytest.raises(ValueError, match=re.escape(message)):
        action(mc)


def test_dynamic_batching_conflicts_with_sequence_batching():
    mc = pb_utils.ModelConfig({"name": "m", "sequence_batching": {}})
    with pytest.raises(ValueError, match="sequence_batching"):
        mc.set_dynamic_batching()
    decoupled = pb_utils.ModelConfig({"name": "m", "model_transaction_policy": {"decoupled": True}})
    with pytest.raises(ValueError, match="decoupled"):
        decoupled.set_model_transaction_policy({"decoupled": False})


# -- logging and metrics ------------------------------------------------------------------------

LINE = re.compile(r'^([IWE])(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) (\d+) test_pb_utils\.py:(\d+)\] (".*")$')


def test_logger_writes_triton_format(capsys):
    pb_utils.Logger.log_info("hello")
    pb_utils.Logger.log_warn("careful")
    pb_utils.Logger.log_error('multi\nline "quoted"')
    pb_utils.Logger.log("via level", pb_utils.Logger.WARNING)
    logfmt.set_verbose(0)
    pb_utils.Logger.log_verbose("hidden")
    logfmt.set_verbose(1)
    try:
        pb_utils.Logger.log_verbose("shown")
    finally:
        logfmt.set_verbose(0)
    lines = capsys.readouterr().err.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m.group(1), json.loads(m.group(6))) for m in parsed] == [
        ("I", "hello"), ("W", "careful"), ("E", 'multi\nline "quoted"'), ("W", "via level"), ("I", "shown")
    ]


def test_metrics():
    counter = pb_utils.MetricFamily("test_requests_total", "requests", pb_utils.MetricFamily.COUNTER)
    m = counter.Metric(labels={"model": "m"})
    m.increment(2)
    m.increment(1)
    assert m.value() == 3 and counter.Metric(labels={"model": "m"}) is m
    with pytest.raises(pb_utils.TritonModelException):
        m.increment(-1)
    with pytest.raises(pb_utils.TritonModelException):
        m.set(5)
    gauge = pb_utils.MetricFamily("test_gauge", "g", pb_utils.MetricFamily.GAUGE).Metric()
    gauge.set(4.5)
    gauge.increment(-1)
    assert gauge.value() == 3.5
    hist_family = pb_utils.MetricFamily("test_latency", "h", pb_utils.MetricFamily.HISTOGRAM)
    with pytest.raises(pb_utils.TritonModelException, match="buckets"):
        hist_family.Metric(labels={})
    hist = hist_family.Metric(labels={}, buckets=[1, 5])
    for v in (0.5, 2, 10):
        hist.observe(v)
    assert hist.histogram() == ([1.0, 5.0], [1, 2], 12.5, 3)
    with pytest.raises(pb_utils.TritonModelException):
        hist.value()
    with pytest.raises(pb_utils.TritonModelException, match="different kind"):
        pb_utils.MetricFamily("test_latency", "h", pb_utils.MetricFamily.GAUGE)


def test_every_reference_name_exists():
    names = """Tensor InferenceRequest InferenceResponse InferenceResponseSender TritonError TritonModelException
    get_input_tensor_by_name get_output_tensor_by_name get_input_config_by_name get_output_config_by_name
    using_decoupled_model_transaction_policy triton_string_to_numpy triton_to_numpy_type numpy_to_triton_type
    serialize_byte_tensor deserialize_bytes_tensor TRITON_STRING_TO_NUMPY Logger MetricFamily Metric load_model
    unload_model is_model_ready PreferredMemory ModelConfig TRITONSERVER_RESPONSE_COMPLETE_FINAL
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_START TRITONSERVER_REQUEST_FLAG_SEQUENCE_END TRITONSERVER_REQUEST_RELEASE_ALL
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE TRITONSERVER_MEMORY_GPU TRITONSERVER_MEMORY_CPU""".split()
    missing = [n for n in names if not hasattr(pb_utils, n)]
    assert not missing
    for method in ("inputs", "request_id", "correlation_id", "flags", "set_flags", "timeout", "parameters", "trace",
                   "requested_output_names", "get_response_sender", "is_cancelled", "set_release_flags", "exec", "async_exec"):
        assert callable(getattr(pb_utils.InferenceRequest, method))
    for method in ("name", "as_numpy", "shape", "triton_dtype", "is_cpu", "to_dlpack", "from_dlpack", "__dlpack__", "__dlpack_device__"):
        assert callable(getattr(pb_utils.Tensor, method))
