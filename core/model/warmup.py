"""Model warm-up: run the config's `model_warmup` samples through a version before it turns READY.

Each sample becomes `batch_size` requests of one batch row each (Triton builds warm-up batches the
same way), sent together through the version's own scheduler so they take the real path to the
worker instances; this repeats `count` times (0 means once) and, per repetition, once per instance
so every instance sees the sample when the scheduler spreads them. Any failure — unreadable data
file, wrong size, an error from the model — fails the load with "failed to run warmup sample ...",
which the version then shows as its UNAVAILABLE reason.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from tritonpy.core.errors import ServerError, invalid
from tritonpy.core.types import InferRequest, InferResponse, InputTensor
from tritonpy.proto import dtypes, model_config_pb2 as mc

log = logging.getLogger("tritonpy.core.model.warmup")

__all__ = ["run_warmup", "sample_inputs", "WARMUP_DIR"]

# Triton reads `input_data_file` from this folder inside the model directory.
WARMUP_DIR = "warmup"


class _Scheduler(Protocol):
    async def enqueue(self, request: InferRequest, batch_size: int) -> InferResponse: ...


def _element_count(dims: list[int]) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def _tensor(
    model_dir: Path, name: str, spec: "mc.ModelWarmup.Input", rng: np.random.Generator
) -> tuple[str, np.ndarray]:
    """(wire datatype, numpy data with the sample's dims) for one warm-up input."""
    config_type = mc.DataType.Name(spec.data_type)
    wire = dtypes.CONFIG_TO_WIRE.get(config_type)
    if wire is None:
        raise invalid(f"input '{name}': unsupported warm-up data type {config_type}")
    dims = list(spec.dims)
    if any(d < 0 for d in dims):
        raise invalid(f"input '{name}': warm-up dims must be fixed, got {dims}")
    count = _element_count(dims)
    choice = spec.WhichOneof("input_data_type")
    if choice == "input_data_file":
        return wire, _from_file(model_dir, name, spec.input_data_file, wire, dims, count)
    if wire == "BYTES":
        data = np.empty(count, dtype=np.object_)
        if choice == "random_data":
            data[:] = [str(int(v)).encode() for v in rng.integers(0, 1000, size=count)]
        else:
            data[:] = [b""] * count
        return wire, data.reshape(dims)
    np_type = dtypes.wire_to_numpy(wire)
    if choice == "random_data":
        if wire == "BOOL":
            data = rng.integers(0, 2, size=count).astype(np.bool_)
        elif np_type.kind == "f":
            data = rng.random(count).astype(np_type)
        else:
            data = rng.integers(0, 100, size=count).astype(np_type)
    else:  # zero_data (and no choice at all, which Triton also fills with zeros)
        data = np.zeros(count, dtype=np_type)
    return wire, data.reshape(dims)


def _from_file(model_dir: Path, name: str, filename: str, wire: str, dims: list[int], count: int) -> np.ndarray:
    path = model_dir / WARMUP_DIR / filename
    if Path(filename).name != filename:
        raise invalid(f"input '{name}': warm-up file '{filename}' must be a file name in '{WARMUP_DIR}/'")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise invalid(
            f"input '{name}': unable to read warm-up file '{WARMUP_DIR}/{filename}': {exc.strerror}"
        ) from None
    if wire == "BYTES":
        try:
            return dtypes.deserialize_bytes(raw, count).reshape(dims)
        except ValueError as exc:
            raise invalid(f"input '{name}': warm-up file '{filename}': {exc}") from None
    np_type = dtypes.wire_to_numpy(wire)
    need = count * np_type.itemsize
    if len(raw) != need:
        raise invalid(
            f"input '{name}': warm-up file '{filename}' has {len(raw)} bytes, expected {need} "
            f"for {wire} dims {dims}"
        )
    return np.frombuffer(raw, dtype=np_type).reshape(dims).copy()


def sample_inputs(
    model_dir: Path, config: mc.ModelConfig, sample: "mc.ModelWarmup", rng: np.random.Generator
) -> list[InputTensor]:
    """The inputs of one request of a sample (one batch row when the model batches)."""
    batched = config.max_batch_size > 0
    inputs = []
    for name in sorted(sample.inputs):
        wire, data = _tensor(model_dir, name, sample.inputs[name], rng)
        if batched:
            data = data.reshape([1, *data.shape])
        inputs.append(InputTensor(name=name, datatype=wire, shape=list(data.shape), data=data))
    return inputs


# Correlation ids for warm-up requests of sequence models: far above what clients use in practice.
_WARMUP_SEQUENCE_BASE = (1 << 63) + 1
_warmup_ids = itertools.count(_WARMUP_SEQUENCE_BASE)


async def _one(scheduler: _Scheduler, model: str, inputs: list[InputTensor], batched: bool,
               sequence: bool = False) -> None:
    request = InferRequest(model_name=model, inputs=inputs)
    if sequence:
        # a sequence model only takes requests of a sequence: each sample is a one-step sequence
        request.sequence_id = next(_warmup_ids)
        request.sequence_start = request.sequence_end = True
    response = await scheduler.enqueue(request, 1 if batched else 0)
    response.release()


async def run_warmup(
    model: str, model_dir: Path, config: mc.ModelConfig, scheduler: _Scheduler, instances: int
) -> None:
    """Run every warm-up sample; raise ServerError naming the sample on the first failure."""
    rng = np.random.default_rng()
    batched = config.max_batch_size > 0
    sequence = config.WhichOneof("scheduling_choice") == "sequence_batching"
    for index, sample in enumerate(config.model_warmup):
        label = sample.name or f"sample {index}"
        try:
            inputs = sample_inputs(Path(model_dir), config, sample, rng)
            rows = max(sample.batch_size, 1)
            for _ in range(max(sample.count, 1)):
                jobs = [_one(scheduler, model, inputs, batched, sequence)
                        for _ in range(rows * max(instances, 1))]
                results = await asyncio.gather(*jobs, return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
        except ServerError as exc:
            raise ServerError(exc.code, f"failed to run warmup sample '{label}': {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - whatever broke the sample fails the load, named in the message
            raise invalid(f"failed to run warmup sample '{label}': {type(exc).__name__}: {exc}") from None
        log.info("model '%s': warm-up sample '%s' done", model, label)
