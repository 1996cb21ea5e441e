"""The small in-process models behind `fake_facade.FakeFacade`: a real `ModelConfig` each (so
requests are checked by the core's own `validate_request` and decoded with a real `ModelIO`) and a
numpy function in place of a backend."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Union

import numpy as np

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.model.version import ModelIO
from tritonpy.core.types import InferRequest
from tritonpy.proto import dtypes
from tritonpy.proto import model_config_pb2 as mc

Tensors = dict[str, np.ndarray]
# One-to-one models return their outputs; decoupled ones an iterable of responses.
RunResult = Union[Tensors, Iterator[Tensors], list[Tensors]]


@dataclasses.dataclass
class FakeModel:
    name: str
    inputs: list[tuple[str, str, list[int]]]  # (name, datatype, dims without the batch dimension)
    outputs: list[tuple[str, str, list[int]]]
    run: Callable[[Tensors, InferRequest], RunResult]
    max_batch_size: int = 0
    decoupled: bool = False
    platform: str = "python"
    # Accept any datatype and shape (checks only the input names): for codec tests that send every
    # wire type to one model.
    any_input: bool = False

    def config(self) -> mc.ModelConfig:
        cfg = mc.ModelConfig(name=self.name, platform=self.platform, backend="python",
                             max_batch_size=self.max_batch_size)
        for name, dt, dims in self.inputs:
            cfg.input.add(name=name, data_type=mc.DataType.Value(dtypes.WIRE_TO_CONFIG[dt]), dims=dims)
        for name, dt, dims in self.outputs:
            cfg.output.add(name=name, data_type=mc.DataType.Value(dtypes.WIRE_TO_CONFIG[dt]), dims=dims)
        cfg.model_transaction_policy.decoupled = self.decoupled
        return cfg

    def io(self) -> ModelIO:
        return ModelIO(self.config(), {})


def _add_sub(t: Tensors, _: InferRequest) -> Tensors:
    return {"OUTPUT0": t["INPUT0"] + t["INPUT1"], "OUTPUT1": t["INPUT0"] - t["INPUT1"]}


def _add_sub_strings(t: Tensors, _: InferRequest) -> Tensors:
    a = np.vectorize(lambda b: int(b))(t["INPUT0"]).astype(np.int64)
    b = np.vectorize(lambda b: int(b))(t["INPUT1"]).astype(np.int64)
    to_bytes = np.vectorize(lambda v: str(v).encode(), otypes=[np.object_])
    return {"OUTPUT0": to_bytes(a + b), "OUTPUT1": to_bytes(a - b)}


def _identity(t: Tensors, _: InferRequest) -> Tensors:
    return {"OUTPUT0": t["INPUT0"]}


def _repeat(t: Tensors, _: InferRequest) -> Iterator[Tensors]:
    """Three responses: IN, IN + 1, IN + 2."""
    for i in range(3):
        yield {"OUT": (t["IN"] + i).astype(np.int32)}


def _text(t: Tensors, req: InferRequest) -> Tensors:
    text = t["text_input"].reshape(-1)[0]
    return {"text_output": np.array([text[::-1]], dtype=np.object_), "length": np.array([len(text)], np.int32)}


def _text_words(t: Tensors, req: InferRequest) -> Iterator[Tensors]:
    """One response per word; the word FAIL fails the stream after the words before it were sent."""
    text = t["text_input"].reshape(-1)[0]
    for word in text.split():
        if word == b"FAIL":
            raise ServerError(ErrorCode.INTERNAL, "the model failed mid-stream")
        yield {"text_output": np.array([word], dtype=np.object_)}


# The model named SLOW waits for FakeFacade.gate before answering.
SLOW = "slow"


def default_models() -> dict[str, FakeModel]:
    models = [
        FakeModel("simple", [("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])],
                  [("OUTPUT0", "INT32", [16]), ("OUTPUT1", "INT32", [16])], _add_sub, max_batch_size=8),
        FakeModel("add_sub", [("INPUT0", "FP32", [4]), ("INPUT1", "FP32", [4])],
                  [("OUTPUT0", "FP32", [4]), ("OUTPUT1", "FP32", [4])], _add_sub),
        FakeModel("simple_string", [("INPUT0", "BYTES", [16]), ("INPUT1", "BYTES", [16])],
                  [("OUTPUT0", "BYTES", [16]), ("OUTPUT1", "BYTES", [16])], _add_sub_strings, max_batch_size=8),
        FakeModel("repeat_int32", [("IN", "INT32", [-1])], [("OUT", "INT32", [-1])], _repeat, decoupled=True),
        FakeModel("text_gen", [("text_input", "BYTES", [1])],
                  [("text_output", "BYTES", [1]), ("length", "INT32", [1])], _text),
        FakeModel("text_words", [("text_input", "BYTES", [1])], [("text_output", "BYTES", [1])],
                  _text_words, decoupled=True),
        FakeModel("two_dynamic", [("INPUT0", "FP32", [-1, -1])], [("OUTPUT0", "FP32", [-1, -1])], _identity),
        FakeModel("batched_fp32", [("INPUT0", "FP32", [-1])], [("OUTPUT0", "FP32", [-1])], _identity,
                  max_batch_size=4),
        FakeModel("batched_fp16", [("INPUT0", "FP16", [-1])], [("OUTPUT0", "FP16", [-1])], _identity,
                  max_batch_size=8),
        FakeModel("identity", [("INPUT0", "BYTES", [-1])], [("OUTPUT0", "BYTES", [-1])], _identity,
                  any_input=True),
        FakeModel(SLOW, [("INPUT0", "INT32", [-1])], [("OUTPUT0", "INT32", [-1])], _identity),
    ]
    for dt in ("FP32", "FP16", "BF16", "BOOL", "BYTES", "UINT8", "INT8", "INT64", "UINT64", "FP64"):
        dims = [1] if dt == "BYTES" else [-1]
        models.append(FakeModel(f"identity_{dt.lower()}", [("INPUT0", dt, dims)], [("OUTPUT0", dt, dims)], _identity))
    return {m.name: m for m in models}


def classify(arr: np.ndarray, top: int, batched: bool) -> np.ndarray:
    """Triton's classification output as the core writes it: per batch row, the top-N
    "value:index" strings, the value printed as a C float (`%f`)."""
    rows = arr.reshape(arr.shape[0], -1) if batched else arr.reshape(1, -1)
    k = min(top, rows.shape[1])
    result = np.empty((rows.shape[0], k), dtype=np.object_)
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for c, idx in enumerate(order):
            result[r, c] = f"{float(row[idx]):f}:{int(idx)}".encode()
    return result if batched else result.reshape(k)
