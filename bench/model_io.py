"""Model tensors for the benchmark: shapes from metadata, input data, and the bytes of each request.

Every request body is serialised ONCE before the load starts (one per data step), so the load loop
only writes pre-built bytes: the client then spends its CPU on the exchange, not on numpy or JSON.
"""
from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import numpy as np

from tritonpy.proto import dtypes


class BenchError(Exception):
    """A problem the user must fix (unknown model, unresolved shape, bad data file): exit status 1."""


@dataclasses.dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # full request shape, batch dimension included when the model batches


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPlan:
    """What one request looks like: the inputs with concrete shapes, the outputs, and the data steps."""
    name: str
    version: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]  # shape may hold -1 where the model does not fix it
    steps: tuple[dict[str, np.ndarray], ...]  # input name -> array, one dict per data step


def resolve_inputs(metadata: dict[str, Any], max_batch_size: int, batch_size: int,
                   overrides: dict[str, tuple[int, ...]]) -> tuple[TensorSpec, ...]:
    """Concrete input shapes: the batch dim from -b, other -1 dims from --shape overrides."""
    if max_batch_size == 0 and batch_size != 1:
        raise BenchError(f"model {metadata.get('name')!r} does not batch (max_batch_size 0): use -b 1")
    if max_batch_size and batch_size > max_batch_size:
        raise BenchError(f"-b {batch_size} exceeds the model's max_batch_size {max_batch_size}")
    known = {t["name"] for t in metadata.get("inputs", [])}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise BenchError(f"--shape names unknown inputs {unknown}; the model has {sorted(known)}")
    specs: list[TensorSpec] = []
    for tensor in metadata.get("inputs", []):
        dims = [int(d) for d in tensor["shape"]]
        body = dims[1:] if max_batch_size else dims
        if tensor["name"] in overrides:
            wanted = list(overrides[tensor["name"]])
            if len(wanted) != len(body) or any(d >= 0 and d != w for d, w in zip(body, wanted)):
                raise BenchError(
                    f"--shape {tensor['name']}:{','.join(map(str, wanted))} does not fit the model's "
                    f"dims {body} (give the dims without the batch dimension)")
            body = wanted
        if any(d < 0 for d in body):
            raise BenchError(
                f"input {tensor['name']!r} has variable dims {body}: give --shape "
                f"{tensor['name']}:{','.join('1' if d < 0 else str(d) for d in body)}")
        shape = ([batch_size] if max_batch_size else []) + body
        specs.append(TensorSpec(tensor["name"], tensor["datatype"], tuple(shape)))
    if not specs:
        raise BenchError(f"model {metadata.get('name')!r} has no inputs in its metadata")
    return tuple(specs)


def resolve_outputs(metadata: dict[str, Any], max_batch_size: int, batch_size: int) -> tuple[TensorSpec, ...]:
    out: list[TensorSpec] = []
    for tensor in metadata.get("outputs", []):
        dims = [int(d) for d in tensor["shape"]]
        if max_batch_size and dims:
            dims = [batch_size] + dims[1:]
        out.append(TensorSpec(tensor["name"], tensor["datatype"], tuple(dims)))
    return tuple(out)


def _generate(spec: TensorSpec, kind: str, rng: np.random.Generator) -> np.ndarray:
    if spec.datatype == "BYTES":
        count = int(np.prod(spec.shape)) if spec.shape else 1
        values = ["0"] * count if kind == "zero" else [str(int(v)) for v in rng.integers(0, 10_000, count)]
        return np.array([v.encode() for v in values], dtype=np.object_).reshape(spec.shape)
    dtype = dtypes.wire_to_numpy(spec.datatype)
    if kind == "zero":
        return np.zeros(spec.shape, dtype=dtype)
    if dtype.kind == "f":
        return rng.random(spec.shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 100), spec.shape, endpoint=True).astype(dtype)


def _from_json_value(spec: TensorSpec, value: Any) -> np.ndarray:
    """perf_analyzer's data-file forms: a flat list, {"content": [...], "shape": [...]}, or {"b64": "..."}."""
    shape: tuple[int, ...] = spec.shape
    if isinstance(value, dict):
        if "shape" in value:
            shape = tuple(int(d) for d in value["shape"])
        if "b64" in value:
            raw = base64.b64decode(value["b64"])
            if spec.datatype == "BYTES":
                return dtypes.deserialize_bytes(raw).reshape(shape)
            return np.frombuffer(raw, dtype=dtypes.wire_to_numpy(spec.datatype)).reshape(shape)
        if "content" not in value:
            raise BenchError(f"input {spec.name!r} in the data file needs 'content', 'b64' or a list")
        value = value["content"]
    if spec.datatype == "BYTES":
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in np.asarray(value, dtype=object).reshape(-1)]
        arr = np.empty(len(flat), dtype=np.object_)
        arr[:] = flat
    else:
        arr = np.asarray(value, dtype=dtypes.wire_to_numpy(spec.datatype)).reshape(-1)
    try:
        return arr.reshape(shape)
    except ValueError:
        raise BenchError(f"data for {spec.name!r} has {arr.size} elements, shape {list(shape)} needs "
                         f"{int(np.prod(shape))}") from None


def load_steps(specs: tuple[TensorSpec, ...], source: str, seed: int = 0) -> tuple[dict[str, np.ndarray], ...]:
    """The data steps the load cycles through: one for random/zero, one per entry of a data file."""
    if source in ("random", "zero"):
        rng = np.random.default_rng(seed)
        return ({s.name: _generate(s, source, rng) for s in specs},)
    try:
        with open(source, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read --input-data {source!r}: {exc}") from None
    entries = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BenchError(f"--input-data {source!r} needs a non-empty list under 'data'")
    steps: list[dict[str, np.ndarray]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BenchError(f"--input-data entry {i} is not an object")
        missing = [s.name for s in specs if s.name not in entry]
        if missing:
            raise BenchError(f"--input-data entry {i} lacks inputs {missing}")
        steps.append({s.name: _from_json_value(s, entry[s.name]) for s in specs})
    return tuple(steps)


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return dtypes.serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()


def json_data(array: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return array.reshape(-1).tolist()
