"""Messages between the core and a backend worker process: the one place they are defined.

Framing on the ZeroMQ socket (DEALER in the worker, ROUTER in the core):
    [kind: 1 byte] [msgpack-encoded struct]
The kind byte picks the struct type, so either side decodes with a typed decoder and never pickles.
Tensor bytes do not ride inside these messages except for tiny ones (`TensorRef.inline`): they live in
POSIX shared memory and a `TensorRef` names the segment, offset and size.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, cast

import msgspec

# How long a tensor may be and still travel inline in a control message.
INLINE_MAX_BYTES = 4096


# Request and response parameters: Triton's InferParameter kinds, encoded with the message (no JSON
# text inside msgpack). Build them with `wire_params`: the typed decoder on the other side refuses a
# whole message whose parameters hold anything else.
Parameters = dict[str, bool | int | float | str]
_SCALAR_TYPES = frozenset((bool, int, float, str))


def wire_params(params: Any) -> Parameters:
    """`params` as `Parameters`: the dict itself when it already fits (the usual case, no copy);
    else a copy with bytes decoded as UTF-8, numpy scalars unwrapped and anything else as its
    text. Not a dict (a model's JSON list, None): no parameters."""
    if not isinstance(params, dict):
        return {}
    for key, value in params.items():
        if type(value) not in _SCALAR_TYPES or type(key) is not str:
            return {str(k): _scalar(v) for k, v in params.items()}
    return params


def _scalar(value: Any) -> bool | int | float | str:
    for kind in (bool, int, float, str):  # subclasses (IntEnum, numpy float64) as their base type
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item):
        try:
            unwrapped = item()
        except (TypeError, ValueError):
            unwrapped = None
        if type(unwrapped) in _SCALAR_TYPES:
            return cast("bool | int | float | str", unwrapped)
    return str(value)


class ErrorCode(enum.IntEnum):
    """Triton's error codes (TRITONSERVER_Error_Code order); frontends map them to HTTP/gRPC status."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7
    # Multi-tenancy (not Triton codes; numbered in the tenancy range so other additions cannot clash).
    UNAUTHENTICATED = 30
    PERMISSION_DENIED = 31
    RESOURCE_EXHAUSTED = 32


class ErrorInfo(msgspec.Struct, frozen=True, array_like=True):
    code: int
    message: str


class TensorRef(msgspec.Struct, array_like=True):
    """Where a tensor's bytes are. BYTES tensors are stored length-prefixed (see proto.dtypes)."""

    name: str
    datatype: str
    shape: list[int]
    # Either inline bytes, or a shared-memory segment name + offset + byte size.
    inline: bytes | None = None
    segment: str = ""
    offset: int = 0
    nbytes: int = 0


class RequestMsg(msgspec.Struct, array_like=True):
    request_id: str
    inputs: list[TensorRef]
    requested_outputs: list[str]
    # Request parameters (the Python backend hands its models them as JSON text, as Triton does).
    parameters: Parameters = {}
    correlation_id: int | str = 0
    flags: int = 0
    # Client shared-memory destinations for outputs: output name -> TensorRef (segment/offset/nbytes).
    output_shm: dict[str, TensorRef] = {}


class ResponseMsg(msgspec.Struct, array_like=True):
    outputs: list[TensorRef] = []
    error: ErrorInfo | None = None
    parameters: Parameters = {}


# ---- core -> worker -------------------------------------------------------------------------


class Init(msgspec.Struct, array_like=True):
    model_name: str
    model_version: int
    model_repository: str  # the model's directory (<repo>/<model>)
    instance_name: str
    instance_kind: str  # KIND_CPU / KIND_GPU / KIND_MODEL
    device_id: int
    backend: str
    # ModelConfig as JSON (protobuf field names). It stays JSON text on purpose: backends hand it to
    # models as such (pb_utils' `args['model_config']` is a JSON string, as in Triton) and answer
    # autocomplete with JSON; a typed struct would have to mirror the whole protobuf schema.
    config_json: str
    autocomplete: bool  # ask the backend to complete the config first
    output_prefix: str  # name prefix for the worker's own output segments
    backend_config: dict[str, str] = {}
    log_verbose: int = 0
    heartbeat_interval_s: float = 0.2


class Execute(msgspec.Struct, array_like=True):
    batch_id: int
    requests: list[RequestMsg]
    # When the core gathered a batch (all requests with equal non-batch shapes, max_batch_size > 0),
    # each input of the whole batch as one contiguous tensor; request i's own TensorRefs are slices of
    # these, so a batching backend can run on `gathered` without copying. Empty otherwise.
    gathered: list[TensorRef] = []


class Release(msgspec.Struct, array_like=True):
    """The core no longer reads the outputs of this batch: the worker may reuse their space."""

    batch_id: int


class Finalize(msgspec.Struct, array_like=True):
    pass


class IsReady(msgspec.Struct, array_like=True):
    token: int


# ---- worker -> core -------------------------------------------------------------------------


class Hello(msgspec.Struct, array_like=True):
    pid: int
    instance_name: str


class InitDone(msgspec.Struct, array_like=True):
    ok: bool
    error: str = ""
    # Completed config (JSON) when autocomplete was requested, else "".
    config_json: str = ""


class ExecuteDone(msgspec.Struct, array_like=True):
    batch_id: int
    responses: list[ResponseMsg]
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    # Set when the whole batch failed (backend raised); then `responses` is empty.
    error: ErrorInfo | None = None


class Heartbeat(msgspec.Struct, array_like=True):
    pass


class IsReadyDone(msgspec.Struct, array_like=True):
    token: int
    ready: bool


class FinalizeDone(msgspec.Struct, array_like=True):
    pass


class LogRecord(msgspec.Struct, array_like=True):
    level: str  # INFO / WARNING / ERROR / VERBOSE
    message: str


# ---- decoupled responses and BLS (core -> worker kinds 10-19, worker -> core kinds 80-89) ---------
# These travel on the worker's I/O socket (routing id `<instance>#io`), which a worker thread of
# its own serves, so they flow while the model's execute() runs.


class CancelRequest(msgspec.Struct, array_like=True):
    """core -> worker: the client gave up on request `index` of batch `batch_id` (decoupled)."""

    batch_id: int
    index: int


class BlsResult(msgspec.Struct, array_like=True):
    """core -> worker: one response to BLS call `bls_id`; `final` ends the call. Output bytes sit
    in the instance's input arena until the worker sends `BlsRelease(release_token)` (0: none)."""

    bls_id: int
    response: ResponseMsg
    final: bool = True
    release_token: int = 0


class ResponseSend(msgspec.Struct, array_like=True):
    """worker -> core: a response of a decoupled request, sent as soon as the model made it.
    `response` None with `final` is the bare FINAL flag. Output blocks stay reserved in the
    worker until the core sends `Release(release_id)` to the I/O socket (0: nothing to release)."""

    batch_id: int
    index: int
    response: ResponseMsg | None = None
    final: bool = False
    release_id: int = 0


class BlsCall(msgspec.Struct, array_like=True):
    """worker -> core: run `request` on another model. Input bytes stay in the worker's arena
    (blocks under `release_id`) until the final `BlsResult` arrives."""

    bls_id: int
    model_name: str
    model_version: str
    request: RequestMsg
    decoupled: bool = False
    timeout_us: int = 0
    release_id: int = 0


class BlsCancel(msgspec.Struct, array_like=True):
    """worker -> core: stop BLS call `bls_id` (the model cancelled its response iterator)."""

    bls_id: int


class BlsRelease(msgspec.Struct, array_like=True):
    """worker -> core: the worker copied a BlsResult's outputs; free their blocks."""

    release_token: int


class MetricOp(msgspec.Struct, array_like=True):
    """worker -> core: one operation of a model's custom metric (pb_utils.MetricFamily / Metric).
    The core keeps the values, summed over every instance, and exports them at /metrics."""

    family: str
    description: str
    kind: int  # pb_utils.MetricFamily.COUNTER (0), GAUGE (1), HISTOGRAM (2)
    labels: dict[str, str]
    op: str  # "create", "increment", "set", "observe"
    value: float = 0.0
    buckets: list[float] = []


# ---- sequence batching (core -> worker kinds 20-29, worker -> core kinds 90-99) -----------------


class EndSequences(msgspec.Struct, array_like=True):
    """core -> worker: these sequences ended without an END request (idle timeout, cancellation);
    drop what is kept for them (implicit state). Sent on the control socket, so it is handled in
    order with the Execute messages around it."""

    correlation_ids: list[int | str]


_KINDS: dict[type, int] = {
    Init: 1,
    Execute: 2,
    Release: 3,
    Finalize: 4,
    IsReady: 5,
    Hello: 64,
    InitDone: 65,
    ExecuteDone: 66,
    Heartbeat: 67,
    IsReadyDone: 68,
    FinalizeDone: 69,
    LogRecord: 70,
    EndSequences: 20,
    CancelRequest: 10,
    BlsResult: 11,
    ResponseSend: 80,
    BlsCall: 81,
    BlsCancel: 82,
    BlsRelease: 83,
    MetricOp: 84,
}
_TYPES: dict[int, type] = {v: k for k, v in _KINDS.items()}
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[int, msgspec.msgpack.Decoder[Any]] = {kind: msgspec.msgpack.Decoder(t) for kind, t in _TYPES.items()}


class MessageError(ValueError):
    """A frame that is not one of our messages."""


def encode(msg: msgspec.Struct) -> list[bytes]:
    """Frames for one message: [kind byte, payload]."""
    return [bytes((_KINDS[type(msg)],)), _ENCODER.encode(msg)]


def decode(frames: Sequence[bytes | memoryview | Any]) -> msgspec.Struct:
    """Inverse of `encode`; raises MessageError for anything else."""
    if len(frames) != 2 or len(frames[0]) != 1:
        raise MessageError(f"expected 2 frames [kind, payload], got {len(frames)}")
    kind = bytes(frames[0])[0]
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise MessageError(f"unknown message kind {kind}")
    try:
        msg: msgspec.Struct = decoder.decode(frames[1])
        return msg
    except msgspec.DecodeError as exc:
        raise MessageError(str(exc)) from exc
