"""A batch's tensors on their way to a worker and back, for one instance.

Inputs go into the instance's input arena (inline when tiny). When the scheduler asks to gather,
each input of the whole batch becomes ONE block, filled with one copy from the request buffers,
and every request gets a row slice of it, so a batching backend can run on the block as is.
Client shared-memory inputs and outputs are never copied: they travel as references to the
client's segment. On the way back, outputs become numpy views of the worker's segments (read-only
maps), BYTES are decoded, and the batch stays reserved in the worker until every response of the
batch was released (or garbage collected).

One bad request does not sink its neighbours (STYLE.md pattern 5): a request whose inputs cannot
be placed gets its own error and is left out of the batch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import weakref
from typing import Any, Callable

import numpy as np

from tritonpy.core.errors import ServerError, internal, invalid, unavailable
from tritonpy.core.types import InferRequest, InferResponse, InputTensor, ResponseTensor, ShmRef
from tritonpy.proto import dtypes
from tritonpy.proto.messages import INLINE_MAX_BYTES, ExecuteDone, RequestMsg, TensorRef, wire_params
from tritonpy.shm.arena import Arena, SegmentCache
from tritonpy.shm.segment import ShmError, ShmExhausted
from tritonpy.shm.tensors import read_tensor, write_tensor

__all__ = ["BatchCodec", "PackedBatch", "ResolveShm", "attach_release"]

log = logging.getLogger("tritonpy.core.instance")

# (client shm slice, datatype, shape, tensor name) -> where the worker finds it
ResolveShm = Callable[[ShmRef, str, list[int], str], TensorRef]

SEQUENCE_START = 1
SEQUENCE_END = 2


@dataclasses.dataclass(slots=True)
class PackedBatch:
    """What goes into one `Execute`, and what to free or map when it comes back."""

    msgs: list[RequestMsg]
    gathered: list[TensorRef]
    included: list[int]  # indexes (into the caller's request list) of the requests sent
    blocks: list[tuple[str, int]]  # input blocks to free when the worker answered
    output_shm: list[dict[str, ShmRef]]  # per included request: output name -> client region


class BatchCodec:
    """Packs requests for one instance's worker and unpacks its answers."""

    def __init__(
        self, *, where: str, model_name: str, model_version: int, config_json: str, resolve_shm: ResolveShm | None
    ) -> None:
        self.where = where  # "model 'm' instance 'i'", the start of every error message
        self.model_name = model_name
        self.model_version = str(model_version)
        self.resolve_shm = resolve_shm
        self.output_names: list[str] = []
        self.output_types: dict[str, str] = {}
        self.set_config(config_json)

    def set_config(self, config_json: str) -> None:
        """Output names (for requests that ask for every output) and their wire types.

        Parsed once per config, not per request; the config is JSON because the worker needs it
        as such (see `proto.messages.Init.config_json`)."""
        try:
            config = json.loads(config_json) if config_json else {}
        except ValueError:
            config = {}
        self.output_names = []
        self.output_types = {}
        for out in config.get("output", []) if isinstance(config, dict) else []:
            if isinstance(out, dict) and out.get("name"):
                self.output_names.append(out["name"])
                self.output_types[out["name"]] = dtypes.CONFIG_TO_WIRE.get(str(out.get("data_type", "")), "")

    # --- to the worker -----------------------------------------------------------------------
    def pack(
        self,
        arena: Arena,
        requests: list[InferRequest],
        gather: bool,
        results: list[InferResponse | ServerError | None],
    ) -> PackedBatch:
        """Inputs into `arena`; a request that cannot be packed gets its error in `results`."""
        if gather and requests and _gatherable(requests):
            blocks: list[tuple[str, int]] = []
            try:
                return self._pack_gathered(arena, requests, blocks)
            except (ShmExhausted, ServerError) as exc:
                # One by one instead: then a request that cannot go fails alone, with a clear reason.
                log.warning("[%s] cannot gather the batch (%s); packing requests one by one", self.where, exc)
                _free(arena, blocks)
        packed = PackedBatch([], [], [], [], [])
        for i, req in enumerate(requests):
            own: list[tuple[str, int]] = []
            try:
                refs = [self._input_ref(arena, inp, own) for inp in req.inputs]
                packed.msgs.append(self._request_msg(req, refs))
            except ServerError as exc:
                _free(arena, own)
                results[i] = exc
                continue
            except (KeyError, ValueError, TypeError) as exc:
                _free(arena, own)
                results[i] = invalid(f"{self.where}: request '{req.id}' cannot be sent: {exc}")
                continue
            packed.blocks.extend(own)
            packed.included.append(i)
            packed.output_shm.append(_client_outputs(req))
        return packed

    def _input_ref(self, arena: Arena, inp: InputTensor, blocks: list[tuple[str, int]]) -> TensorRef:
        if inp.shm is not None:
            return self._shm_ref(inp.shm, inp.name, inp.datatype, list(inp.shape))
        if inp.data is None:
            raise invalid(f"input '{inp.name}' has no data")
        array = _as_array(inp)
        try:
            ref, block = write_tensor(arena, inp.name, inp.datatype, array)
        except ShmExhausted as exc:
            raise unavailable(f"{self.where}: out of shared memory for input '{inp.name}': {exc}") from exc
        except ShmError as exc:
            raise internal(f"{self.where}: cannot place input '{inp.name}' in shared memory: {exc}") from exc
        if block is not None:
            blocks.append(block)
        return ref

    def _shm_ref(self, ref: ShmRef, name: str, datatype: str, shape: list[int]) -> TensorRef:
        if self.resolve_shm is None:
            raise invalid(f"tensor '{name}': client shared memory is not available for this model")
        resolved = self.resolve_shm(ref, datatype, shape, name)
        return TensorRef(
            name, datatype, list(shape), inline=resolved.inline,
            segment=resolved.segment, offset=resolved.offset, nbytes=resolved.nbytes,
        )

    def _request_msg(self, req: InferRequest, refs: list[TensorRef]) -> RequestMsg:
        if req.outputs is None:
            wanted = list(self.output_names)
            out_shm: dict[str, TensorRef] = {}
        else:
            wanted = [o.name for o in req.outputs]
            out_shm = {
                o.name: self._shm_ref(o.shm, o.name, self.output_types.get(o.name, ""), [])
                for o in req.outputs
                if o.shm is not None
            }
        flags = (SEQUENCE_START if req.sequence_start else 0) | (SEQUENCE_END if req.sequence_end else 0)
        return RequestMsg(
            request_id=req.id,
            inputs=refs,
            requested_outputs=wanted,
            parameters=wire_params(req.parameters),
            correlation_id=req.sequence_id,
            flags=flags,
            output_shm=out_shm,
        )

    def _pack_gathered(self, arena: Arena, requests: list[InferRequest], blocks: list[tuple[str, int]]) -> PackedBatch:
        """One block per input for the whole batch; each request's refs are row slices of it."""
        per_request: list[list[TensorRef]] = [[] for _ in requests]
        gathered: list[TensorRef] = []
        for first in requests[0].inputs:
            name, datatype = first.name, first.datatype
            np_type = dtypes.wire_to_numpy(datatype)
            parts = [_as_array(_find_input(req, name)) for req in requests]
            rest = [int(d) for d in parts[0].shape[1:]]
            rows = [int(p.shape[0]) for p in parts]
            total_rows = sum(rows)
            row_items = int(np.prod(rest, dtype=np.int64))
            row_bytes = row_items * np_type.itemsize
            total = total_rows * row_bytes
            seg, base = "", 0
            if total <= INLINE_MAX_BYTES:
                buf: Any = bytearray(total)
            else:
                seg, base, buf = arena.alloc(total)
                blocks.append((seg, base))
            dst = np.frombuffer(buf, dtype=np_type, count=total_rows * row_items).reshape([total_rows, *rest])
            row = 0
            for k, part in enumerate(parts):
                dst[row : row + rows[k]] = part
                start, n = row * row_bytes, rows[k] * row_bytes
                if seg:
                    ref = TensorRef(name, datatype, list(part.shape), segment=seg, offset=base + start, nbytes=n)
                else:
                    ref = TensorRef(name, datatype, list(part.shape), inline=bytes(buf[start : start + n]))
                per_request[k].append(ref)
                row += rows[k]
            del dst
            shape = [total_rows, *rest]
            if seg:
                gathered.append(TensorRef(name, datatype, shape, segment=seg, offset=base, nbytes=total))
            else:
                gathered.append(TensorRef(name, datatype, shape, inline=bytes(buf)))
        msgs = [self._request_msg(req, refs) for req, refs in zip(requests, per_request)]
        return PackedBatch(msgs, gathered, list(range(len(requests))), blocks, [_client_outputs(r) for r in requests])

    # --- from the worker ---------------------------------------------------------------------
    def unpack(
        self, cache: SegmentCache, requests: list[InferRequest], packed: PackedBatch, done: ExecuteDone,
        results: list[InferResponse | ServerError | None],
    ) -> list[InferResponse]:
        """ResponseMsgs into `results` (InferResponse or ServerError); returns the InferResponses."""
        responses: list[InferResponse] = []
        for k, (index, rmsg) in enumerate(zip(packed.included, done.responses)):
            req = requests[index]
            if rmsg.error is not None:
                results[index] = ServerError.from_info(rmsg.error)
                continue
            try:
                outputs = [_output(cache, ref, packed.output_shm[k]) for ref in rmsg.outputs]
            except (ShmError, ValueError, KeyError) as exc:
                results[index] = internal(f"{self.where}: cannot read the response outputs: {exc}")
                continue
            response = InferResponse(
                model_name=self.model_name,
                model_version=self.model_version,
                id=req.id,
                outputs=outputs,
                parameters=rmsg.parameters,
            )
            results[index] = response
            responses.append(response)
        return responses


# --- releasing a batch's outputs ---------------------------------------------------------------
class _ReleaseGroup:
    """Counts the live responses of one batch; the last one to go runs `callback` (once)."""

    __slots__ = ("remaining", "callback", "_lock")

    def __init__(self, remaining: int, callback: Callable[[], None]) -> None:
        self.remaining = remaining
        self.callback: Callable[[], None] | None = callback
        self._lock = threading.Lock()  # the garbage collector may drop a response on any thread

    def drop(self) -> None:
        with self._lock:
            self.remaining -= 1
            cb = self.callback if self.remaining <= 0 else None
            if cb is not None:
                self.callback = None
        if cb is not None:
            cb()


class _ReleaseToken:
    """What `InferResponse._release` holds. Calling it releases; if the response is garbage
    collected unreleased, the finalizer releases instead (a forgetful caller costs no memory)."""

    __slots__ = ("_fin", "__weakref__")

    def __init__(self, group: _ReleaseGroup) -> None:
        self._fin = weakref.finalize(self, group.drop)
        self._fin.atexit = False

    def __call__(self) -> None:
        self._fin()


def attach_release(responses: list[InferResponse], callback: Callable[[], None]) -> None:
    """`callback` runs once, when every one of `responses` was released or collected."""
    group = _ReleaseGroup(len(responses), callback)
    for response in responses:
        response._release = _ReleaseToken(group)


# --- helpers -------------------------------------------------------------------------------------
def _free(arena: Arena, blocks: list[tuple[str, int]]) -> None:
    for seg, off in blocks:
        arena.free(seg, off)
    blocks.clear()


def _client_outputs(req: InferRequest) -> dict[str, ShmRef]:
    return {o.name: o.shm for o in (req.outputs or ()) if o.shm is not None}


def _output(cache: SegmentCache, ref: TensorRef, client: dict[str, ShmRef]) -> ResponseTensor:
    shm = client.get(ref.name)
    if shm is not None:  # the worker wrote it into the client's region
        return ResponseTensor(ref.name, ref.datatype, list(ref.shape), data=None, shm=shm)
    return ResponseTensor(ref.name, ref.datatype, list(ref.shape), data=read_tensor(cache, ref))


def _as_array(inp: InputTensor) -> np.ndarray:
    """The input's data with its declared wire dtype and shape (a view when nothing changes)."""
    array = inp.data
    assert array is not None
    if inp.datatype != "BYTES":
        want = dtypes.wire_to_numpy(inp.datatype)
        if array.dtype != want:
            array = array.astype(want)
    shape = [int(d) for d in inp.shape]
    if list(array.shape) != shape:
        try:
            array = array.reshape(shape)
        except ValueError:
            raise invalid(f"input '{inp.name}': {array.size} elements do not fit the shape {shape}") from None
    return array


def _find_input(req: InferRequest, name: str) -> InputTensor:
    for inp in req.inputs:
        if inp.name == name:
            return inp
    raise KeyError(name)


def _gatherable(requests: list[InferRequest]) -> bool:
    """Re-check what gathering needs (the scheduler decided already; this keeps us safe): same input
    names, types and non-batch shapes, data present (client shared memory is never copied), no BYTES."""
    first = requests[0]
    signature = sorted((i.name, i.datatype, tuple(i.shape[1:])) for i in first.inputs)
    for req in requests:
        for inp in req.inputs:
            if inp.shm is not None or inp.data is None or len(inp.shape) < 1:
                return False
            if inp.datatype == "BYTES" or inp.datatype not in dtypes.WIRE_TYPES:
                return False
        if req is not first and sorted((i.name, i.datatype, tuple(i.shape[1:])) for i in req.inputs) != signature:
            return False
    return True
