"""Tensor traffic of a worker: inputs out of shared memory, outputs into it.

Inputs are read-only numpy views onto the core's segments (no copy). Outputs go into the worker's
own arena, one block per tensor, or one block for a whole batch when several responses return
row slices of one array (a batching backend split its result): then the bytes are copied once and
each response gets a reference into that block. Blocks are remembered per batch and freed when the
core says `Release(batch_id)`. An output the client asked to receive in its own shared-memory
region is written straight there instead.

A client's own segments are never mapped here: they are read and written through a file
descriptor opened for the one access (shm/segment.py `read_into`/`write_from`). A client can shrink
its segment at any moment, and a mapped page past the new end would be a SIGBUS that kills this
worker with every request in it; pread/pwrite see a short count and fail only the one request.
It also means no client mapping or descriptor outlives the request (nothing to forget on
unregister). The price is one copy of client-shm inputs into private memory.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from tritonpy.backends.base import BackendRequest, BackendResponse, OutputTensor
from tritonpy.proto import dtypes
from tritonpy.proto.messages import (
    INLINE_MAX_BYTES, ErrorCode, ErrorInfo, RequestMsg, ResponseMsg, TensorRef, wire_params,
)
from tritonpy.shm.arena import Arena, SegmentCache
from tritonpy.shm.cuda import CudaRegions, is_cuda_segment
from tritonpy.shm.segment import ShmError, ShmExhausted, read_into, write_from
from tritonpy.shm.tensors import decode_array, read_tensor, tensor_bytes

log = logging.getLogger("tritonpy.backends.worker.tensor_io")


class OutputError(Exception):
    """Writing one output failed; only its request fails."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.info = ErrorInfo(int(code), message)


# Segments the server's own processes create (input and output arenas); everything else is a client's.
OWN_SEGMENT_PREFIX = "/tritonpy_"


class InputReader:
    """Builds `BackendRequest`s from `RequestMsg`s; keeps the input segments mapped, by name."""

    def __init__(self) -> None:
        self._cache = SegmentCache(writable=False)
        self._cuda = CudaRegions()

    def read(self, ref: TensorRef) -> np.ndarray:
        if ref.inline is None and is_cuda_segment(ref.segment):
            # client CUDA shared memory: CPU backends get a host copy
            return decode_array(ref.datatype, ref.shape, self._cuda.read(ref.segment, ref.offset, ref.nbytes).data)
        if ref.inline is None and not ref.segment.startswith(OWN_SEGMENT_PREFIX):
            # a client's region: copied out through its descriptor (see the module docstring)
            data = np.empty(ref.nbytes, dtype=np.uint8)
            read_into(ref.segment, ref.offset, data.data)
            return decode_array(ref.datatype, ref.shape, data.data)
        try:
            return read_tensor(self._cache, ref)
        except ShmError:
            if ref.inline is not None:
                raise
            # The region may have been re-created with another size since we mapped it: map it anew once.
            self._cache.forget(ref.segment)
            return read_tensor(self._cache, ref)

    def build(self, msg: RequestMsg) -> BackendRequest:
        """ValueError/ShmError when an input cannot be read (the request alone fails)."""
        inputs: dict[str, np.ndarray] = {}
        types: dict[str, str] = {}
        for ref in msg.inputs:
            if ref.datatype not in dtypes.WIRE_TYPES:
                raise ValueError(f"input '{ref.name}' has unknown datatype '{ref.datatype}'")
            inputs[ref.name] = self.read(ref)
            types[ref.name] = ref.datatype
        return BackendRequest(
            request_id=msg.request_id,
            inputs=inputs,
            datatypes=types,
            requested_outputs=list(msg.requested_outputs),
            parameters=msg.parameters,
            correlation_id=msg.correlation_id,
            flags=msg.flags,
        )

    def gathered(self, refs: list[TensorRef]) -> dict[str, np.ndarray] | None:
        """The whole-batch inputs, or None when there are none or one cannot be read."""
        if not refs:
            return None
        try:
            return {ref.name: self.read(ref) for ref in refs}
        except (ShmError, ValueError) as exc:
            log.warning("ignoring unreadable gathered inputs: %s", exc)
            return None

    def close(self) -> None:
        self._cache.close()
        self._cuda.close()


@dataclasses.dataclass(slots=True)
class _Slot:
    """One output of one response, and where its bytes end up."""

    response: int
    tensor: OutputTensor
    ref: TensorRef | None = None


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def _shared_base(array: np.ndarray) -> np.ndarray | None:
    """The contiguous array that `array` is a contiguous slice of, if any."""
    base = array.base
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous or not array.flags.c_contiguous:
        return None
    start = _address(array) - _address(base)
    if start < 0 or start + array.nbytes > base.nbytes:
        return None
    return base


def _copy_into(view: memoryview, data: memoryview | bytes) -> None:
    """Copy bytes into shared memory; numpy's copy beats memoryview slice assignment on big blocks."""
    if len(data) < 65536:
        view[:] = data
    else:
        np.copyto(np.frombuffer(view, dtype=np.uint8), np.frombuffer(data, dtype=np.uint8))


def _check_dtype(tensor: OutputTensor) -> None:
    if tensor.datatype not in dtypes.WIRE_TYPES:
        raise OutputError(ErrorCode.INTERNAL, f"output '{tensor.name}' has unknown datatype '{tensor.datatype}'")
    if tensor.datatype == "BYTES":
        return
    expected = dtypes.wire_to_numpy(tensor.datatype)
    if tensor.array.dtype != expected:
        raise OutputError(
            ErrorCode.INTERNAL,
            f"output '{tensor.name}' is declared {tensor.datatype} but holds numpy {tensor.array.dtype}",
        )


class OutputWriter:
    """Writes responses' outputs into the worker's arena or the client's region; frees per batch."""

    def __init__(self, prefix: str, *, inline_max: int = INLINE_MAX_BYTES) -> None:
        self.arena = Arena(prefix)
        self.inline_max = inline_max
        self._blocks: dict[int, list[tuple[str, int]]] = {}
        self._cuda = CudaRegions()

    # -- public ---------------------------------------------------------------------------

    def write_batch(
        self, batch_id: int, msgs: list[RequestMsg], responses: list[BackendResponse]
    ) -> list[ResponseMsg]:
        """One `ResponseMsg` per response; a failure to place an output fails only its request."""
        blocks = self._blocks.setdefault(batch_id, [])
        errors: dict[int, ErrorInfo] = {}
        slots: list[_Slot] = []
        client = any(m.output_shm for m in msgs)
        for index, (msg, response) in enumerate(zip(msgs, responses)):
            if response.error is not None:
                continue
            wanted = set(msg.requested_outputs)
            for tensor in response.outputs:
                if wanted and tensor.name not in wanted:
                    continue
                slot = _Slot(index, tensor)
                try:
                    _check_dtype(tensor)
                    if client and tensor.name in msg.output_shm:
                        slot.ref = self._write_client(tensor, msg.output_shm[tensor.name])
                except OutputError as exc:
                    errors.setdefault(index, exc.info)
                slots.append(slot)
        self._write_shared_groups([s for s in slots if s.ref is None and s.response not in errors], blocks)
        for slot in slots:
            if slot.ref is not None or slot.response in errors:
                continue
            try:
                slot.ref = self._write_own(slot.tensor, blocks)
            except OutputError as exc:
                errors.setdefault(slot.response, exc.info)
        results: list[ResponseMsg] = []
        for index, response in enumerate(responses):
            params = wire_params(response.parameters)
            if response.error is not None:
                results.append(ResponseMsg(error=response.error, parameters=params))
            elif index in errors:
                results.append(ResponseMsg(error=errors[index]))
            else:
                refs = [s.ref for s in slots if s.response == index and s.ref is not None]
                results.append(ResponseMsg(outputs=refs, parameters=params))
        if not blocks:
            # every output went inline or to the client: nothing to free, and the core sends no
            # Release for a batch whose outputs are not in this worker's segments
            self._blocks.pop(batch_id, None)
        return results

    def release(self, batch_id: int) -> None:
        for segment, offset in self._blocks.pop(batch_id, ()):
            self.arena.free(segment, offset)

    def holds(self, batch_id: int) -> bool:
        """Whether blocks are reserved under `batch_id` (a streamed response's release id)."""
        return bool(self._blocks.get(batch_id))

    def remember(self, batch_id: int, block: tuple[str, int]) -> None:
        """Reserve a block written elsewhere (BLS inputs) under `batch_id` until `release`."""
        self._blocks.setdefault(batch_id, []).append(block)

    def close(self) -> None:
        """Unlink the worker's own segments (the core reads nothing more from them)."""
        self._blocks.clear()
        self.arena.close()
        self._cuda.close()

    # -- placement ------------------------------------------------------------------------

    def _alloc(self, nbytes: int, name: str) -> tuple[str, int, memoryview]:
        try:
            return self.arena.alloc(nbytes)
        except ShmExhausted as exc:
            raise OutputError(ErrorCode.UNAVAILABLE, f"cannot place output '{name}': {exc}") from exc
        except ShmError as exc:
            raise OutputError(ErrorCode.INTERNAL, f"cannot place output '{name}': {exc}") from exc

    def _write_own(self, tensor: OutputTensor, blocks: list[tuple[str, int]]) -> TensorRef:
        data = tensor_bytes(tensor.datatype, tensor.array)
        shape = [int(d) for d in tensor.array.shape]
        n = len(data)
        if isinstance(data, memoryview):
            n = data.nbytes
        if n <= self.inline_max:
            return TensorRef(tensor.name, tensor.datatype, shape, inline=bytes(data))
        segment, offset, view = self._alloc(n, tensor.name)
        blocks.append((segment, offset))
        _copy_into(view, data)
        return TensorRef(tensor.name, tensor.datatype, shape, segment=segment, offset=offset, nbytes=n)

    def _write_shared_groups(self, slots: list[_Slot], blocks: list[tuple[str, int]]) -> None:
        """Slices of one array used by two or more responses: copy their span once."""
        groups: dict[int, tuple[np.ndarray, list[_Slot]]] = {}
        for slot in slots:
            array = slot.tensor.array
            if slot.tensor.datatype == "BYTES" or array.nbytes <= self.inline_max:
                continue
            base = _shared_base(array)
            if base is not None:
                groups.setdefault(id(base), (base, []))[1].append(slot)
        for base, members in groups.values():
            if len({m.response for m in members}) < 2:
                continue
            base_addr = _address(base)
            start = min(_address(m.tensor.array) for m in members)
            end = max(_address(m.tensor.array) + m.tensor.array.nbytes for m in members)
            try:
                segment, offset, view = self._alloc(end - start, members[0].tensor.name)
            except OutputError:
                continue  # each member falls back to its own block (and its own error)
            blocks.append((segment, offset))
            raw = base.data.cast("B")
            _copy_into(view, raw[start - base_addr : end - base_addr])
            for m in members:
                array = m.tensor.array
                m.ref = TensorRef(
                    m.tensor.name,
                    m.tensor.datatype,
                    [int(d) for d in array.shape],
                    segment=segment,
                    offset=offset + (_address(array) - start),
                    nbytes=array.nbytes,
                )

    def _write_client(self, tensor: OutputTensor, dest: TensorRef) -> TensorRef:
        data = tensor_bytes(tensor.datatype, tensor.array)
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n > dest.nbytes:
            raise OutputError(
                ErrorCode.INVALID_ARG,
                f"shared memory region too small for output '{tensor.name}': needs {n} bytes, has {dest.nbytes}",
            )
        if is_cuda_segment(dest.segment):
            try:
                self._cuda.write(dest.segment, dest.offset, data)
            except ShmError as exc:
                raise OutputError(
                    ErrorCode.INVALID_ARG, f"cannot write output '{tensor.name}' to CUDA shared memory: {exc}"
                ) from exc
            return TensorRef(tensor.name, tensor.datatype, [int(d) for d in tensor.array.shape],
                             segment=dest.segment, offset=dest.offset, nbytes=n)
        raw = data if isinstance(data, memoryview) else memoryview(data)
        try:
            write_from(dest.segment, dest.offset, raw)
        except ShmError as exc:
            raise OutputError(
                ErrorCode.INVALID_ARG, f"cannot write output '{tensor.name}' to shared memory: {exc}"
            ) from exc
        return TensorRef(
            tensor.name,
            tensor.datatype,
            [int(d) for d in tensor.array.shape],
            segment=dest.segment,
            offset=dest.offset,
            nbytes=n,
        )
