"""Our hand-written .proto files against the descriptors tritonclient ships.

tritonclient's generated modules are the ground truth for every name, number, type, label,
oneof and enum value: a mismatch would mean tritonclient cannot talk to us. The comparison
walks every message (nested types and map entries included) and enum of both files in both
directions, so an extra or a missing definition fails as well as a wrong field.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

tc_service = pytest.importorskip("tritonclient.grpc.service_pb2")
tc_model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
tc_service_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

from google.protobuf import descriptor as _d  # noqa: E402

from tritonpy.proto import descriptor_pool  # noqa: E402
from tritonpy.proto import grpc_service_pb2, grpc_service_pb2_grpc  # noqa: E402
from tritonpy.proto import health_pb2, health_pb2_grpc, model_config_pb2  # noqa: E402

# (theirs, ours) per file.
FILE_PAIRS = {
    "model_config": (tc_model_config.DESCRIPTOR, model_config_pb2.DESCRIPTOR),
    "grpc_service": (tc_service.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR),
}


def _walk_messages(container):
    for msg in container.message_types_by_name.values() if isinstance(container, _d.FileDescriptor) \
            else container.nested_types:
        yield msg
        yield from _walk_messages(msg)


def _all_messages(file_desc) -> dict[str, _d.Descriptor]:
    return {m.full_name: m for m in _walk_messages(file_desc)}


def _all_enums(file_desc) -> dict[str, _d.EnumDescriptor]:
    enums = {e.full_name: e for e in file_desc.enum_types_by_name.values()}
    for msg in _walk_messages(file_desc):
        enums.update({e.full_name: e for e in msg.enum_types})
    return enums


def _field_facts(f: _d.FieldDescriptor) -> dict:
    return {
        "name": f.name,
        "number": f.number,
        "type": f.type,
        "cpp_type": f.cpp_type,
        "repeated": f.is_repeated,
        "required": f.is_required,
        "message_type": f.message_type.full_name if f.message_type else None,
        "enum_type": f.enum_type.full_name if f.enum_type else None,
        "oneof": f.containing_oneof.name if f.containing_oneof else None,
        "has_presence": f.has_presence,
        "json_name": f.json_name,
    }


def _message_facts(m: _d.Descriptor) -> dict:
    return {
        "fields": [_field_facts(f) for f in m.fields],  # declaration order matters for text/JSON
        "oneofs": {o.name: [f.name for f in o.fields] for o in m.oneofs},
        "nested_types": sorted(n.full_name for n in m.nested_types),
        "enum_types": sorted(e.full_name for e in m.enum_types),
        "map_entry": m.GetOptions().map_entry,
    }


def _enum_facts(e: _d.EnumDescriptor) -> list[tuple[str, int]]:
    return [(v.name, v.number) for v in e.values]


MESSAGE_CASES = [(key, name) for key, (theirs, _) in FILE_PAIRS.items() for name in _all_messages(theirs)]
ENUM_CASES = [(key, name) for key, (theirs, _) in FILE_PAIRS.items() for name in _all_enums(theirs)]


def test_cases_cover_everything():
    # A guard against the walk silently finding nothing (e.g. an API change).
    assert len(MESSAGE_CASES) > 120
    assert len(ENUM_CASES) >= 9
    assert ("model_config", "inference.ModelOptimizationPolicy.Cuda.GraphSpec.LowerBound.InputEntry") \
        in MESSAGE_CASES


@pytest.mark.parametrize("key", sorted(FILE_PAIRS))
def test_file_level(key):
    theirs, ours = FILE_PAIRS[key]
    assert ours.package == theirs.package == "inference"
    assert ours.name == f"tritonpy/proto/{theirs.name}"
    assert ours.pool is descriptor_pool()
    assert set(ours.message_types_by_name) == set(theirs.message_types_by_name)
    assert set(ours.enum_types_by_name) == set(theirs.enum_types_by_name)
    assert set(ours.services_by_name) == set(theirs.services_by_name)
    # Both directions: nothing extra of ours, nothing of theirs missing.
    assert set(_all_messages(ours)) == set(_all_messages(theirs))
    assert set(_all_enums(ours)) == set(_all_enums(theirs))


@pytest.mark.parametrize(("key", "full_name"), MESSAGE_CASES, ids=[n for _, n in MESSAGE_CASES])
def test_message_matches(key, full_name):
    theirs = _all_messages(FILE_PAIRS[key][0])[full_name]
    ours = _all_messages(FILE_PAIRS[key][1])[full_name]
    assert descriptor_pool().FindMessageTypeByName(full_name) is ours
    assert _message_facts(ours) == _message_facts(theirs)


@pytest.mark.parametrize(("key", "full_name"), ENUM_CASES, ids=[n for _, n in ENUM_CASES])
def test_enum_matches(key, full_name):
    theirs = _all_enums(FILE_PAIRS[key][0])[full_name]
    ours = _all_enums(FILE_PAIRS[key][1])[full_name]
    assert _enum_facts(ours) == _enum_facts(theirs)


def _method_facts(service: _d.ServiceDescriptor) -> list[tuple]:
    return [(m.name, m.input_type.full_name, m.output_type.full_name, m.client_streaming,
             m.server_streaming) for m in service.methods]


def test_service_methods_match():
    theirs = tc_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    assert _method_facts(ours) == _method_facts(theirs)
    assert len(ours.methods) == 20


class _RecordingChannel:
    """Stands in for grpc.Channel and records which method paths a stub binds."""

    def __init__(self):
        self.calls: dict[str, str] = {}

    def _record(self, kind):
        def bind(path, request_serializer=None, response_deserializer=None, **_):
            self.calls[path] = kind
            return object()
        return bind

    def __getattr__(self, kind):
        if kind in {"unary_unary", "unary_stream", "stream_unary", "stream_stream"}:
            return self._record(kind)
        raise AttributeError(kind)


def test_stub_method_paths_match():
    theirs, ours = _RecordingChannel(), _RecordingChannel()
    tc_service_grpc.GRPCInferenceServiceStub(theirs)
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(ours)
    assert ours.calls == theirs.calls
    assert ours.calls["/inference.GRPCInferenceService/ModelStreamInfer"] == "stream_stream"


def test_health_service():
    request = health_pb2.DESCRIPTOR.message_types_by_name["HealthCheckRequest"]
    response = health_pb2.DESCRIPTOR.message_types_by_name["HealthCheckResponse"]
    assert health_pb2.DESCRIPTOR.package == "grpc.health.v1"
    assert request.full_name == "grpc.health.v1.HealthCheckRequest"
    assert [(f.name, f.number, f.type) for f in request.fields] == [("service", 1, _d.FieldDescriptor.TYPE_STRING)]
    (status,) = response.fields
    assert (status.name, status.number, status.enum_type.full_name) == (
        "status", 1, "grpc.health.v1.HealthCheckResponse.ServingStatus")
    assert _enum_facts(status.enum_type) == [
        ("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)]
    service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert service.full_name == "grpc.health.v1.Health"
    assert _method_facts(service) == [("Check", request.full_name, response.full_name, False, False)]
    channel = _RecordingChannel()
    health_pb2_grpc.HealthStub(channel)
    assert channel.calls == {"/grpc.health.v1.Health/Check": "unary_unary"}


def test_health_matches_grpc_health_checking_if_installed():
    theirs_mod = pytest.importorskip("grpc_health.v1.health_pb2")
    for name in ("HealthCheckRequest", "HealthCheckResponse"):
        theirs = theirs_mod.DESCRIPTOR.message_types_by_name[name]
        ours = health_pb2.DESCRIPTOR.message_types_by_name[name]
        assert _message_facts(ours) == _message_facts(theirs)
    check = theirs_mod.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]
    assert _method_facts(health_pb2.DESCRIPTOR.services_by_name["Health"]) == [
        (check.name, check.input_type.full_name, check.output_type.full_name, False, False)]


def test_wire_round_trip_with_tritonclient():
    """Bytes written by one side parse on the other, field for field."""
    ours = model_config_pb2.ModelConfig(name="m", max_batch_size=8, backend="python")
    ours.input.add(name="IN", data_type=model_config_pb2.TYPE_FP32, dims=[-1, 3])
    ours.dynamic_batching.priority_queue_policy[2].max_queue_size = 5
    ours.parameters["k"].string_value = "v"
    theirs = tc_model_config.ModelConfig.FromString(ours.SerializeToString(deterministic=True))
    assert theirs.dynamic_batching.priority_queue_policy[2].max_queue_size == 5
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)

    req = tc_service.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00" * 4])
    req.parameters["sequence_id"].uint64_param = 7
    mine = grpc_service_pb2.ModelInferRequest.FromString(req.SerializeToString())
    assert mine.parameters["sequence_id"].WhichOneof("parameter_choice") == "uint64_param"
    assert mine.raw_input_contents == [b"\x00" * 4]


_COEXIST_SCRIPT = textwrap.dedent("""
    import sys
    first, second = sys.argv[1:3]
    import importlib
    for name in (first, second):
        importlib.import_module(name)
    import tritonclient.grpc.service_pb2 as tc
    import tritonclient.grpc.model_config_pb2 as tc_mc
    from tritonpy.proto import grpc_service_pb2 as ours, model_config_pb2 as ours_mc
    from tritonpy.proto import grpc_service_pb2_grpc, health_pb2_grpc  # noqa: F401
    from google.protobuf import json_format, text_format
    # Each side's classes work and read the other's bytes.
    cfg = text_format.Parse('name: "m" max_batch_size: 4 dynamic_batching {}', ours_mc.ModelConfig())
    assert json_format.MessageToDict(cfg)["maxBatchSize"] == 4
    assert tc_mc.ModelConfig.FromString(cfg.SerializeToString()).name == "m"
    tc_req = tc.ModelInferRequest(model_name="x")
    assert ours.ModelInferRequest.FromString(tc_req.SerializeToString()).model_name == "x"
    assert ours.ModelInferRequest.DESCRIPTOR is not tc.ModelInferRequest.DESCRIPTOR
    print("coexist-ok")
""")

_ORDERS = [
    ("tritonclient.grpc.service_pb2", "tritonpy.proto.grpc_service_pb2"),
    ("tritonpy.proto.grpc_service_pb2", "tritonclient.grpc.service_pb2"),
    ("tritonclient.grpc.model_config_pb2", "tritonpy.proto.model_config_pb2"),
    ("tritonpy.proto.model_config_pb2", "tritonclient.grpc.model_config_pb2"),
]


def _run_fresh(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(("first", "second"), _ORDERS, ids=[f"{a}-then-{b}" for a, b in _ORDERS])
def test_coexist_with_tritonclient_in_one_process(first, second):
    proc = _run_fresh(["-c", _COEXIST_SCRIPT, first, second])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "coexist-ok" in proc.stdout


def test_pure_python_runtime_works_alone():
    # Under the pure-Python runtime the two packages cannot share a process (see
    # scripts/gen_proto.py), but ours must still work on its own.
    script = ("from tritonpy.proto import grpc_service_pb2 as g, health_pb2_grpc\n"
              "r = g.ModelInferRequest(model_name='x')\n"
              "assert g.ModelInferRequest.FromString(r.SerializeToString()).model_name == 'x'\n"
              "from google.protobuf.internal import api_implementation\n"
              "print(api_implementation.Type())\n")
    proc = _run_fresh(["-c", script], {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "python"


def test_package_import_is_light():
    # `import tritonpy.proto` (what proto/messages.py users pay) must not load protobuf or grpc.
    script = ("import sys, tritonpy\n"
              "before = set(sys.modules)\n"
              "import tritonpy.proto\n"
              "bad = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('google', 'grpc'))\n"
              "assert not bad, bad\n")
    proc = _run_fresh(["-c", script])
    assert proc.returncode == 0, proc.stderr[-3000:]
