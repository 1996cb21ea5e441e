"""Client-side system shared memory for `--shared-memory system`: POSIX regions under /dev/shm,
created and removed by the benchmark itself (plain os/mmap, so no multiprocessing resource tracker
outlives the run), and the layout of inputs and per-slot outputs inside them.

Layout: one input region holding every data step's tensors back to back (read-only for the server,
shared by all in-flight requests), and one output region cut into one slot per concurrent request,
so responses in flight never write over each other.
"""
from __future__ import annotations

import dataclasses
import mmap
import os

import numpy as np

from .model_io import ModelPlan, tensor_bytes

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Region:
    """A POSIX shared-memory object (`/dev/shm/<key>`), mapped here, unlinked on close."""

    def __init__(self, key: str, size: int) -> None:
        self.key, self.size = key, max(size, 1)
        fd = os.open(f"/dev/shm/{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, self.size)
            self.map = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            os.unlink(f"/dev/shm/{key}")
            raise
        os.close(fd)

    def write(self, offset: int, data: bytes) -> None:
        self.map[offset: offset + len(data)] = data

    def close(self) -> None:
        try:
            self.map.close()
        finally:
            try:
                os.unlink(f"/dev/shm/{self.key}")
            except FileNotFoundError:
                pass


@dataclasses.dataclass(frozen=True, slots=True)
class ShmLayout:
    input_region: str  # registered name
    output_region: str
    input_offsets: tuple[dict[str, tuple[int, int]], ...]  # per step: input -> (offset, size)
    output_offsets: dict[str, tuple[int, int]]  # output -> (offset within a slot, size)
    slot_size: int


class ShmSet:
    """The two regions of one run plus their layout; `close()` unlinks both."""

    def __init__(self, plan: ModelPlan, slots: int, unknown_output_size: int) -> None:
        # "tritonpy_" keys are reserved for the server's own segments.
        tag = f"tp_bench_{os.getpid()}"
        self.input_name, self.output_name = f"{tag}_in", f"{tag}_out"
        steps: list[dict[str, tuple[int, int]]] = []
        blobs: list[tuple[int, bytes]] = []
        pos = 0
        for step in plan.steps:
            offsets: dict[str, tuple[int, int]] = {}
            for spec in plan.inputs:
                data = tensor_bytes(step[spec.name], spec.datatype)
                offsets[spec.name] = (pos, len(data))
                blobs.append((pos, data))
                pos = _align(pos + len(data))
            steps.append(offsets)
        out_offsets: dict[str, tuple[int, int]] = {}
        opos = 0
        for spec in plan.outputs:
            if spec.datatype != "BYTES" and all(d >= 0 for d in spec.shape):
                size = int(np.prod(spec.shape)) * np.dtype(_np(spec.datatype)).itemsize
            else:
                size = unknown_output_size
            out_offsets[spec.name] = (opos, size)
            opos = _align(opos + size)
        self.slot_size = max(opos, ALIGN)
        self.inputs = Region(self.input_name, pos)
        try:
            self.outputs = Region(self.output_name, self.slot_size * slots)
        except BaseException:
            self.inputs.close()
            raise
        for offset, data in blobs:
            self.inputs.write(offset, data)
        self.layout = ShmLayout(self.input_name, self.output_name, tuple(steps), out_offsets, self.slot_size)
        self.slots = slots

    def close(self) -> None:
        try:
            self.inputs.close()
        finally:
            self.outputs.close()


def _np(datatype: str) -> np.dtype:
    from tritonpy.proto import dtypes

    return dtypes.wire_to_numpy(datatype)
