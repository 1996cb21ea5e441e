"""A stand-in for the core's side of the worker protocol, for tests and benchmarks.

Binds a ROUTER on a temporary ipc path, spawns a real worker process, does the handshake, writes
request inputs into a test-owned Arena, and reads outputs back through a SegmentCache. Every
resource it opens is closed by `close()` (also on errors, via the context manager).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from tritonpy.proto import dtypes
from tritonpy.proto.messages import (
    Execute,
    ExecuteDone,
    Finalize,
    FinalizeDone,
    Heartbeat,
    Hello,
    Init,
    InitDone,
    IsReady,
    IsReadyDone,
    Release,
    RequestMsg,
    TensorRef,
    decode,
    encode,
)
from tritonpy.shm.arena import Arena, SegmentCache
from tritonpy.shm.segment import unlink_prefix
from tritonpy.shm.tensors import read_tensor, write_tensor

WORKER_MODULE = "tritonpy.backends.worker"


class HarnessError(AssertionError):
    pass


def write_model(repo: Path, name: str, *, files: dict[str, str], version: int = 1) -> Path:
    """A model directory `<repo>/<name>` with `files` (paths relative to the version dir,
    or to the model dir when they start with "../")."""
    model_dir = Path(repo) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = (version_dir / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return model_dir


# The intermediate parent of the parent-death tests: starts the worker with itself as parent,
# prints the worker's pid, then waits to be killed.
_INTERMEDIATE = """
import subprocess, sys, time
cmd = sys.argv[1:]
cmd[cmd.index("--parent-pid") + 1] = str(__import__("os").getpid())
log = open(cmd.pop(0), "wb")
proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
print(proc.pid, flush=True)
time.sleep(600)
"""


def worker_command(endpoint: str, name: str, parent_pid: int, extra: list[str] | None = None) -> list[str]:
    return [
        sys.executable, "-m", WORKER_MODULE,
        "--endpoint", endpoint, "--instance-name", name, "--parent-pid", str(parent_pid), *(extra or []),
    ]


def wire_type(array: np.ndarray) -> str:
    return dtypes.numpy_to_wire(array.dtype)


class WorkerHarness:
    """One worker process and the core-side sockets and memory that talk to it."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        model_dir: Path,
        backend: str,
        config: dict | None = None,
        version: int = 1,
        autocomplete: bool = False,
        instance_name: str = "model_0",
        backend_config: dict[str, str] | None = None,
        heartbeat_interval_s: float = 0.2,
        extra_args: list[str] | None = None,
        inline_max: int | None = None,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.model_dir = Path(model_dir)
        self.backend = backend
        self.config = config or {"name": self.model_dir.name}
        self.version = version
        self.autocomplete = autocomplete
        self.instance_name = instance_name
        self.backend_config = backend_config or {}
        self.heartbeat_interval_s = heartbeat_interval_s
        self.extra_args = extra_args or []
        tag = uuid.uuid4().hex[:10]
        self.endpoint = f"ipc://{self.tmp_path}/w-{tag}.sock"
        self.output_prefix = f"/tritonpy_wout_{tag}"
        self.input_arena = Arena(f"/tritonpy_win_{tag}")
        self.reader = SegmentCache(writable=False)
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.endpoint)
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.tmp_path / f"worker-{tag}.log"
        self._stderr_file: Any = None
        self.worker_id = instance_name.encode()
        self.heartbeats = 0
        self.hello: Hello | None = None
        self._batch_ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._input_blocks: list[tuple[str, int]] = []

    # -- process ----------------------------------------------------------------------------

    def start(self, *, wait_hello: bool = True) -> "WorkerHarness":
        self._stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            worker_command(self.endpoint, self.instance_name, os.getpid(), self.extra_args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr_file,
        )
        if wait_hello:
            msg = self.recv(timeout=30)
            if not isinstance(msg, Hello):
                raise HarnessError(f"expected Hello, got {msg!r}")
            self.hello = msg
        return self

    def start_via_intermediate(self) -> tuple[subprocess.Popen, int]:
        """Spawn the worker from an intermediate process (its parent); returns (intermediate, worker pid)."""
        cmd = worker_command(self.endpoint, self.instance_name, 0, self.extra_args)
        intermediate = subprocess.Popen(
            [sys.executable, "-c", _INTERMEDIATE, str(self.stderr_path), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert intermediate.stdout is not None
        line = intermediate.stdout.readline()
        intermediate.stdout.close()
        worker_pid = int(line)
        msg = self.recv(timeout=30)
        if not isinstance(msg, Hello) or msg.pid != worker_pid:
            raise HarnessError(f"expected Hello from {worker_pid}, got {msg!r}")
        self.hello = msg
        return intermediate, worker_pid

    def init(self, **overrides: Any) -> InitDone:
        fields = dict(
            model_name=self.config.get("name", self.model_dir.name),
            model_version=self.version,
            model_repository=str(self.model_dir),
            instance_name=self.instance_name,
            instance_kind="KIND_CPU",
            device_id=0,
            backend=self.backend,
            config_json=json.dumps(self.config),
            autocomplete=self.autocomplete,
            output_prefix=self.output_prefix,
            backend_config=self.backend_config,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )
        fields.update(overrides)
        self.send(Init(**fields))
        msg = self.recv(timeout=60)
        if not isinstance(msg, InitDone):
            raise HarnessError(f"expected InitDone, got {msg!r}")
        return msg

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        """What the worker wrote to stderr so far (its log)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    # -- messages ---------------------------------------------------------------------------

    def send(self, msg: Any) -> None:
        self.router.send_multipart([self.worker_id, *encode(msg)])

    def send_raw(self, frames: list[bytes]) -> None:
        self.router.send_multipart([self.worker_id, *frames])

    def recv(self, timeout: float = 30.0) -> Any:
        """Next non-heartbeat message from the worker (heartbeats are counted)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.router.poll(int(left * 1000)):
                rc = self.proc.poll() if self.proc else None
                raise HarnessError(f"no message from the worker within {timeout}s (worker exit code {rc})")
            identity, *frames = self.router.recv_multipart()
            msg = decode(frames)
            if isinstance(msg, Heartbeat):
                if identity != self.worker_id + b"#hb":
                    raise HarnessError(f"heartbeat from unexpected identity {identity!r}")
                self.heartbeats += 1
                continue
            if identity != self.worker_id:
                raise HarnessError(f"message from unexpected identity {identity!r}")
            return msg

    def wait_heartbeats(self, count: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.heartbeats < count and time.monotonic() < deadline:
            if self.router.poll(50):
                identity, *frames = self.router.recv_multipart()
                if isinstance(decode(frames), Heartbeat):
                    self.heartbeats += 1
        return self.heartbeats

    # -- tensors ----------------------------------------------------------------------------

    def tensor_ref(self, name: str, array: np.ndarray, datatype: str | None = None, *, inline: bool = False) -> TensorRef:
        datatype = datatype or wire_type(array)
        ref, block = write_tensor(None if inline else self.input_arena, name, datatype, array, inline_max=-1 if not inline else 1 << 30)
        if block is not None:
            self._input_blocks.append(block)
        return ref

    def request(
        self,
        inputs: dict[str, np.ndarray],
        *,
        outputs: list[str] | None = None,
        request_id: str = "",
        parameters: dict | None = None,
        output_shm: dict[str, TensorRef] | None = None,
        datatypes: dict[str, str] | None = None,
        inline: bool = False,
    ) -> RequestMsg:
        refs = [self.tensor_ref(n, a, (datatypes or {}).get(n), inline=inline) for n, a in inputs.items()]
        return RequestMsg(
            request_id=request_id,
            inputs=refs,
            requested_outputs=list(outputs or []),
            parameters=parameters or {},
            output_shm=output_shm or {},
        )

    def gathered_batch(self, per_request: list[dict[str, np.ndarray]]) -> tuple[list[RequestMsg], list[TensorRef]]:
        """Requests whose inputs are row slices of one whole-batch tensor per input (as the core gathers)."""
        requests = [RequestMsg(request_id=str(i), inputs=[], requested_outputs=[]) for i in range(len(per_request))]
        gathered: list[TensorRef] = []
        for name in per_request[0]:
            whole = np.concatenate([r[name] for r in per_request])
            ref = self.tensor_ref(name, whole)
            gathered.append(ref)
            row_bytes = whole[0:1].nbytes
            start = 0
            for req, item in zip(requests, per_request):
                n = item[name].shape[0]
                req.inputs.append(
                    TensorRef(name, ref.datatype, list(item[name].shape), segment=ref.segment,
                              offset=ref.offset + start * row_bytes, nbytes=n * row_bytes)
                )
                start += n
        return requests, gathered

    def execute(self, requests: list[RequestMsg], *, gathered: list[TensorRef] | None = None, timeout: float = 30.0) -> ExecuteDone:
        batch_id = next(self._batch_ids)
        self.send(Execute(batch_id, requests, gathered or []))
        msg = self.recv(timeout=timeout)
        if not isinstance(msg, ExecuteDone) or msg.batch_id != batch_id:
            raise HarnessError(f"expected ExecuteDone({batch_id}), got {msg!r}")
        return msg

    def outputs(self, response: Any) -> dict[str, np.ndarray]:
        """Copies of a ResponseMsg's outputs."""
        if response.error is not None:
            raise HarnessError(f"response failed: {response.error}")
        return {ref.name: np.array(read_tensor(self.reader, ref), copy=True) for ref in response.outputs}

    def outputs_view(self, response: Any) -> dict[str, np.ndarray]:
        """Zero-copy views of a ResponseMsg's outputs (valid until the batch is released)."""
        if response.error is not None:
            raise HarnessError(f"response failed: {response.error}")
        return {ref.name: read_tensor(self.reader, ref) for ref in response.outputs}

    def infer(self, inputs: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
        """One request, its outputs, and the batch released."""
        done = self.execute([self.request(inputs, **kwargs)])
        if done.error is not None:
            raise HarnessError(f"batch failed: {done.error}")
        try:
            return self.outputs(done.responses[0])
        finally:
            self.release(done.batch_id)

    def release(self, batch_id: int) -> None:
        self.send(Release(batch_id))

    def free_inputs(self) -> None:
        for segment, offset in self._input_blocks:
            self.input_arena.free(segment, offset)
        self._input_blocks.clear()

    def is_ready(self, timeout: float = 10.0) -> bool:
        token = next(self._tokens)
        self.send(IsReady(token))
        msg = self.recv(timeout=timeout)
        if not isinstance(msg, IsReadyDone) or msg.token != token:
            raise HarnessError(f"expected IsReadyDone({token}), got {msg!r}")
        return msg.ready

    def finalize(self, timeout: float = 10.0) -> int:
        self.send(Finalize())
        msg = self.recv(timeout=timeout)
        if not isinstance(msg, FinalizeDone):
            raise HarnessError(f"expected FinalizeDone, got {msg!r}")
        return self.wait_exit(timeout)

    # -- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        if self._stderr_file is not None:
            self._stderr_file.close()
        self.reader.close()
        self.input_arena.close()
        unlink_prefix(self.output_prefix)  # what a crashed worker may have left
        self.router.close(linger=0)
        self.context.term()

    def __enter__(self) -> "WorkerHarness":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
