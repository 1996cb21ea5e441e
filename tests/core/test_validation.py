"""Request validation against a model configuration: one row per rule, with Triton's wording."""
from __future__ import annotations

import numpy as np
import pytest

from tritonpy.core.repository.config import finalize_config, parse_config_text, resolve_backend
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.types import InferRequest, InputTensor, RequestedOutput, ShmRef
from tritonpy.core.model.request_checks import dims_to_string, validate_request


def config(text: str, name: str):
    cfg = parse_config_text(text, model=name)
    cfg.name = name
    return finalize_config(resolve_backend(cfg), autocomplete=False)


# "plain": no batching; "a" has a variable dim; "c" is optional.
PLAIN = config(
    'backend: "python" max_batch_size: 0 '
    'input [ { name: "a" data_type: TYPE_FP32 dims: [ 2, -1 ] }, { name: "b" data_type: TYPE_INT32 dims: [ 3 ] },'
    '        { name: "c" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ] '
    'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "z" data_type: TYPE_FP32 dims: [ 2 ] } ]',
    "plain",
)
# "batched": max_batch_size 4, a reshape (requests are checked against dims), a BYTES input.
BATCHED = config(
    'backend: "python" max_batch_size: 4 '
    'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape { shape: [ 6 ] } },'
    '        { name: "s" data_type: TYPE_STRING dims: [ -1 ] } ] '
    'output [ { name: "out" data_type: TYPE_FP32 dims: [ 6 ] } ]',
    "batched",
)
# "strict": no optional inputs (the exact-count message).
STRICT = config(
    'backend: "python" input [ { name: "p" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "q" data_type: TYPE_FP32 dims: [ 1 ] } ]'
    ' output [ { name: "r" data_type: TYPE_FP32 dims: [ 1 ] } ]',
    "strict",
)


def t(name: str, datatype: str, shape, data="auto", shm: ShmRef | None = None) -> InputTensor:
    """An input tensor; data "auto" makes one of the right size, None leaves it empty."""
    if isinstance(data, str) and data == "auto":
        count = int(np.prod(shape)) if shape else 1
        if datatype == "BYTES":
            data = np.array([b"x"] * count, dtype=np.object_).reshape(shape)
        else:
            dtype = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}[datatype]
            data = np.zeros(shape, dtype=dtype)
    if shm is not None:
        data = None
    return InputTensor(name=name, datatype=datatype, shape=list(shape), data=data, shm=shm)


def req(model: str, *inputs: InputTensor, outputs: list[str] | None = None) -> InferRequest:
    outs = None if outputs is None else [RequestedOutput(name=n) for n in outputs]
    return InferRequest(model_name=model, inputs=list(inputs), outputs=outs)


GOOD_A = t("a", "FP32", [2, 5])
GOOD_B = t("b", "INT32", [3])

VALID = [
    (PLAIN, req("plain", GOOD_A, GOOD_B), 1),
    (PLAIN, req("plain", GOOD_B, GOOD_A, t("c", "FP32", [1]), outputs=["z"]), 1),
    (PLAIN, req("plain", t("a", "FP32", [2, 0]), GOOD_B), 1),
    (PLAIN, req("plain", GOOD_A, t("b", "INT32", [3], shm=ShmRef("region", 12))), 1),
    (BATCHED, req("batched", t("x", "FP32", [3, 2, 3]), t("s", "BYTES", [3, 5])), 3),
    (BATCHED, req("batched", t("x", "FP32", [4, 2, 3]), t("s", "BYTES", [4, 1], shm=ShmRef("r", 99))), 4),
    (BATCHED, req("batched", t("x", "FP32", [0, 2, 3]), t("s", "BYTES", [0, 1])), 0),
    (STRICT, req("strict", t("p", "FP32", [1]), t("q", "FP32", [1]), outputs=[]), 1),
]


@pytest.mark.parametrize("cfg, request_, batch", VALID)
def test_valid_requests_return_their_batch_size(cfg, request_, batch):
    assert validate_request(cfg, request_) == batch


INVALID = [
    # duplicate input
    (PLAIN, req("plain", GOOD_A, GOOD_A, GOOD_B), "input 'a' already exists in request"),
    # unknown input
    (PLAIN, req("plain", GOOD_A, GOOD_B, t("nope", "FP32", [1])), "unexpected inference input 'nope' for model 'plain'"),
    # missing required input, with and without optional inputs in the model
    (STRICT, req("strict", t("p", "FP32", [1])),
     "expected 2 inputs but got 1 inputs for model 'strict'. Got inputs ['p'], but missing required inputs ['q']. "
     "Please provide all required inputs."),
    (STRICT, req("strict"), "expected 2 inputs but got 0 inputs for model 'strict'. Got inputs [], but missing required "
     "inputs ['p','q']."),
    (PLAIN, req("plain", t("c", "FP32", [1]), GOOD_A),
     "expected number of inputs between 2 and 3 but got 2 inputs for model 'plain'. Got inputs ['c','a'], but missing "
     "required inputs ['b']."),
    # unknown requested output
    (PLAIN, req("plain", GOOD_A, GOOD_B, outputs=["y", "w"]), "unexpected inference output 'w' for model 'plain'"),
    # data type
    (PLAIN, req("plain", t("a", "FP64", [2, 5]), GOOD_B),
     "inference input 'a' data-type is 'FP64', but model 'plain' expects 'FP32'"),
    (BATCHED, req("batched", t("x", "FP32", [1, 2, 3]), t("s", "FP32", [1, 1])),
     "inference input 's' data-type is 'FP32', but model 'batched' expects 'BYTES'"),
    # rank and shape, without batching
    (PLAIN, req("plain", t("a", "FP32", [2]), GOOD_B),
     "unexpected shape for input 'a' for model 'plain'. Expected [2,-1], got [2]. "),
    (PLAIN, req("plain", t("a", "FP32", [3, 5]), GOOD_B),
     "unexpected shape for input 'a' for model 'plain'. Expected [2,-1], got [3,5]. "),
    (PLAIN, req("plain", t("a", "FP32", [2, -1], data=None), GOOD_B),
     "All input dimensions should be specified for input 'a' for model 'plain', got [2,-1]"),
    # shape with batching: the request is checked against dims (not reshape), batch dim first
    (BATCHED, req("batched", t("x", "FP32", [1, 6]), t("s", "BYTES", [1, 1])),
     "unexpected shape for input 'x' for model 'batched'. Expected [-1,2,3], got [1,6]. NOTE: Setting a non-zero "
     "max_batch_size in the model config requires a batch dimension"),
    (BATCHED, req("batched", t("x", "FP32", [2, 3]), t("s", "BYTES", [2, 1])),
     "unexpected shape for input 'x' for model 'batched'. Expected [-1,2,3], got [2,3]."),
    # batch size
    (BATCHED, req("batched", t("x", "FP32", [5, 2, 3]), t("s", "BYTES", [5, 1])),
     "inference request batch-size must be <= 4 for 'batched'"),
    (BATCHED, req("batched", t("x", "FP32", [2, 2, 3]), t("s", "BYTES", [3, 1])),
     "input 's' batch size does not match other inputs for 'batched'"),
    (BATCHED, req("batched", t("x", "FP32", [], data=np.zeros((), np.float32)), t("s", "BYTES", [1, 1])),
     "input 'x' has no shape but model requires batch dimension for 'batched'"),
    (BATCHED, req("batched", t("x", "FP32", [-1, 2, 3], data=None), t("s", "BYTES", [1, 1])),
     "All input dimensions should be specified for input 'x' for model 'batched', got [-1,2,3]"),
    # element counts of the data
    (PLAIN, req("plain", t("a", "FP32", [2, 5], data=np.zeros(9, np.float32)), GOOD_B),
     "input byte size mismatch for input 'a' for model 'plain'. Expected 40, got 36"),
    (PLAIN, req("plain", t("a", "FP32", [2, 5], data=None), GOOD_B),
     "input byte size mismatch for input 'a' for model 'plain'. Expected 40, got 0"),
    (BATCHED, req("batched", t("x", "FP32", [1, 2, 3]), t("s", "BYTES", [1, 3], data=np.array([b"a", b"b"], dtype=object))),
     "expected 3 string elements for inference input 's' for model 'batched', got 2"),
    # shared memory: the region slice must hold exactly the tensor
    (PLAIN, req("plain", GOOD_A, t("b", "INT32", [3], shm=ShmRef("region", 16))),
     "input byte size mismatch for input 'b' for model 'plain'. Expected 12, got 16"),
]


@pytest.mark.parametrize("cfg, request_, message", INVALID)
def test_invalid_requests_are_rejected_with_triton_messages(cfg, request_, message):
    with pytest.raises(ServerError) as info:
        validate_request(cfg, request_)
    assert info.value.code == ErrorCode.INVALID_ARG
    assert info.value.http_status == 400
    assert info.value.message.startswith(message)


def test_dims_to_string():
    assert dims_to_string([]) == "[]"
    assert dims_to_string([-1, 3, 224]) == "[-1,3,224]"


def test_shape_tensor_keeps_its_whole_shape():
    cfg = config(
        'platform: "tensorrt_plan" max_batch_size: 8 '
        'input [ { name: "shape" data_type: TYPE_INT32 dims: [ 2 ] is_shape_tensor: true },'
        '        { name: "data" data_type: TYPE_FP32 dims: [ -1 ] } ] output [ { name: "o" data_type: TYPE_FP32 dims: [ -1 ] } ]',
        "trt",
    )
    shape = InputTensor(name="shape", datatype="INT32", shape=[2], data=np.array([3, 4], np.int32))
    data = InputTensor(name="data", datatype="FP32", shape=[3, 4], data=np.zeros((3, 4), np.float32))
    assert validate_request(cfg, req("trt", shape, data)) == 3
