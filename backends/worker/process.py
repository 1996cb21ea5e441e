"""The backend worker process: one model instance, driven by the core over ZeroMQ.

    python -m tritonpy.backends.worker --endpoint ipc:///path/x.sock --instance-name NAME --parent-pid PID

Life: connect a DEALER (routing id NAME) to the core's ROUTER, say Hello, receive Init, load the
backend and the model, answer InitDone; then serve Execute / Release / IsReady / Finalize until
told to finalize, SIGTERMed, or orphaned. Tensor bytes travel through shared memory (see
worker_io); only small control messages cross the socket. The worker imports nothing from
tritonpy.core or tritonpy.frontends (a test checks), so a backend cannot reach into the server.

Exit codes: 0 after Finalize, SIGTERM or a failed Init (reported in InitDone first); 1 when the
parent died; 2 for bad arguments or a socket that cannot connect.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import inspect
from collections.abc import Iterable
import logging
import os
import signal
import sys
import time
from pathlib import Path

import msgspec
import zmq

from tritonpy.backends import config as cfg
from tritonpy.backends.worker import logfmt
from tritonpy.backends.base import Backend, BackendError, BackendResponse, describe_exception, error_info
from tritonpy.backends.worker.heartbeat import HeartbeatThread, parent_alive, set_parent_death_signal
from tritonpy.backends.registry import find_backend
from tritonpy.backends.worker.state import SequenceStates
from tritonpy.backends.worker.channel import RequestStream, WorkerChannel
from tritonpy.backends.worker.tensor_io import InputReader, OutputWriter
from tritonpy.proto.messages import (
    ErrorCode,
    EndSequences,
    ErrorInfo,
    Execute,
    ExecuteDone,
    Finalize,
    FinalizeDone,
    Hello,
    Init,
    InitDone,
    IsReady,
    IsReadyDone,
    MessageError,
    Release,
    decode,
    encode,
)
from tritonpy.shm.segment import ShmError, unlink_prefix

log = logging.getLogger("tritonpy.backends.worker")
_NO_LOCK = contextlib.nullcontext()

POLL_MS = 200  # how often an idle worker wakes to notice SIGTERM / a dead parent
FINAL_LINGER_MS = 2000  # how long the last reply may wait to be delivered at exit


def _auto_complete(
    backend_cls: type[Backend], config: dict, model_dir: Path, version_dir: Path, backend_config: dict[str, str]
) -> object:
    """Call the backend's auto-complete, passing backend_config only if its signature takes it."""
    hook = backend_cls.auto_complete_config
    try:
        params: Iterable[inspect.Parameter] = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        params = ()
    takes = any(p.name == "backend_config" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if takes:
        return hook(config, model_dir, version_dir, backend_config=backend_config)
    return hook(config, model_dir, version_dir)


def _check_results(backend: Backend, results: object, expected: int) -> None:
    """Exactly one BackendResponse per request, or a clear whole-batch error."""
    name = backend.name or type(backend).__name__
    if not isinstance(results, list) or len(results) != expected:
        if results is None:
            got = "None"
        else:
            got = str(len(results)) if isinstance(results, (list, tuple)) else type(results).__name__
        raise BackendError(
            f"backend '{name}' returned {got} responses for {expected} requests; "
            "exactly one response per request is required"
        )
    for item in results:
        if not isinstance(item, BackendResponse):
            raise BackendError(f"backend '{name}' returned a {type(item).__name__}; expected BackendResponse")


class Worker:
    """Owns the sockets, the backend and the output arena; `run()` is the whole life."""

    def __init__(self, *, endpoint: str, instance_name: str, parent_pid: int) -> None:
        self.endpoint = endpoint
        self.instance_name = instance_name
        self.parent_pid = parent_pid
        self.context = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.backend: Backend | None = None
        self.reader = InputReader()
        self.writer: OutputWriter | None = None
        self.output_prefix = ""
        self.heartbeat: HeartbeatThread | None = None
        self.channel: WorkerChannel | None = None
        self.decoupled = False
        self.states: SequenceStates | None = None  # implicit state of sequence models
        self._terminate = False
        self._finalized = False
        self._closed = False

    # -- plumbing -----------------------------------------------------------------------

    def on_sigterm(self, signum: int, frame: object) -> None:
        self._terminate = True

    def _send(self, msg: msgspec.Struct) -> None:
        assert self.sock is not None
        self.sock.send_multipart(encode(msg))

    def _recv(self) -> msgspec.Struct | None:
        """Next message, or None after POLL_MS of silence; undecodable frames are skipped."""
        assert self.sock is not None
        if not self.sock.poll(POLL_MS):
            return None
        frames = self.sock.recv_multipart()
        try:
            return decode(frames)
        except MessageError as exc:
            log.error("ignoring undecodable message from the core: %s", exc)
            return None

    def _should_stop(self) -> bool:
        if self._terminate:
            log.info("SIGTERM received; finalizing")
            return True
        if not parent_alive(self.parent_pid):
            log.error("parent process %d died; worker exiting", self.parent_pid)
            self._terminate = True
            return True
        return False

    def _unlink_own_segments(self) -> None:
        """From any thread: remove our output segments' names (used when the parent died)."""
        if self.output_prefix:
            unlink_prefix(self.output_prefix.lstrip("/") + "_")

    # -- life -----------------------------------------------------------------------------

    def run(self) -> int:
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.instance_name.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            log.error("cannot connect to %s: %s", self.endpoint, exc)
            return 2
        self._send(Hello(os.getpid(), self.instance_name))
        init = self._wait_for_init()
        if init is None:
            return 1 if not parent_alive(self.parent_pid) else 0
        logfmt.set_verbose(init.log_verbose)
        self.output_prefix = init.output_prefix
        self.heartbeat = HeartbeatThread(
            self.context,
            self.endpoint,
            self.instance_name,
            interval_s=init.heartbeat_interval_s,
            parent_pid=self.parent_pid,
            on_parent_death=self._unlink_own_segments,
        )
        self.heartbeat.start()
        self.channel = WorkerChannel(self.context, self.endpoint, self.instance_name)
        self.channel.start()
        done = self._initialize(init)
        self._send(done)
        if not done.ok:
            log.error("initialization failed: %s", done.error)
            return 0
        self.writer = OutputWriter(init.output_prefix)
        self.channel.writer = self.writer
        self._serve()
        return 1 if not parent_alive(self.parent_pid) else 0

    def _wait_for_init(self) -> Init | None:
        while True:
            if self._should_stop():
                return None
            msg = self._recv()
            if isinstance(msg, Init):
                return msg
            if isinstance(msg, Finalize):
                self._send(FinalizeDone())
                return None
            if msg is not None:
                log.warning("ignoring %s before Init", type(msg).__name__)

    def _initialize(self, init: Init) -> InitDone:
        model_dir = Path(init.model_repository)
        version_dir = model_dir / str(init.model_version)
        completed_json = ""
        try:
            config = cfg.parse_config(init.config_json)
            config.setdefault("name", init.model_name)
            self.decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled"))
            backend_cls = find_backend(init.backend, model_dir=model_dir, version_dir=version_dir)
            if init.autocomplete:
                completed = _auto_complete(backend_cls, config, model_dir, version_dir, dict(init.backend_config))
                if not isinstance(completed, dict):
                    raise BackendError(f"auto_complete_config() returned {type(completed).__name__}, expected a dict")
                config = cfg.normalize_config(completed)
                completed_json = msgspec.json.encode(config).decode()
                self.decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled"))
            self.states = SequenceStates.from_config(config, model_dir)
            self.backend = backend_cls(
                config=config,
                model_dir=model_dir,
                version_dir=version_dir,
                instance_name=init.instance_name or self.instance_name,
                kind=init.instance_kind,
                device_id=init.device_id,
                backend_config=dict(init.backend_config),
            )
        except BaseException as exc:  # noqa: BLE001 - any failure (even sys.exit in model code) fails the load
            text = exc.message if isinstance(exc, BackendError) else describe_exception(exc)
            return InitDone(ok=False, error=f"failed to load model '{init.model_name}': {text}")
        log.info(
            "model '%s' version %d instance '%s' ready (backend %s)",
            init.model_name, init.model_version, self.instance_name, init.backend,
        )
        return InitDone(ok=True, config_json=completed_json)

    def _serve(self) -> None:
        while True:
            if self._should_stop():
                if self._terminate and parent_alive(self.parent_pid):
                    self.finalize_backend()
                return
            msg = self._recv()
            if msg is None:
                continue
            if isinstance(msg, Execute):
                self._send(self._execute(msg))
            elif isinstance(msg, Release):
                assert self.channel is not None
                self.channel.release_blocks(msg.batch_id)
            elif isinstance(msg, IsReady):
                self._send(IsReadyDone(msg.token, self._is_ready()))
            elif isinstance(msg, EndSequences):
                if self.states is not None:
                    self.states.drop(msg.correlation_ids)
            elif isinstance(msg, Finalize):
                self.finalize_backend()
                self._send(FinalizeDone())
                return
            else:
                log.warning("ignoring unexpected %s", type(msg).__name__)

    def _is_ready(self) -> bool:
        assert self.backend is not None
        try:
            return bool(self.backend.is_ready())
        except Exception:
            log.exception("is_ready() raised")
            return False

    def _execute(self, msg: Execute) -> ExecuteDone:
        """Run one batch; every failure becomes an error in the reply, never a dead worker."""
        assert self.backend is not None and self.writer is not None
        t0 = time.monotonic_ns()
        requests = []
        input_errors: dict[int, ErrorInfo] = {}
        for index, request in enumerate(msg.requests):
            try:
                built = self.reader.build(request)
                if self.states is not None:
                    problem = self.states.inject(built)
                    if problem is not None:
                        input_errors[index] = problem
                        continue
                if self.decoupled and self.channel is not None:
                    built.stream = RequestStream(self.channel, msg.batch_id, index, request)
                requests.append(built)
            except (ShmError, ValueError) as exc:
                input_errors[index] = ErrorInfo(int(ErrorCode.INVALID_ARG), f"cannot read inputs: {exc}")
        # Gathered tensors describe the whole batch; with a request left out they no longer fit.
        gathered = None if input_errors else self.reader.gathered(msg.gathered)
        t1 = time.monotonic_ns()
        try:
            results = self.backend.execute(requests, gathered) if requests else []
            _check_results(self.backend, results, len(requests))
            if self.states is not None:
                self.states.capture(requests, results)
        except Exception as exc:  # noqa: BLE001 - the whole batch fails with the backend's reason
            exit_if_out_of_memory(exc)
            if self.states is not None:
                self.states.abandon(requests)
            info = error_info(exc)
            log.error("execute failed for batch %d: %s", msg.batch_id, info.message)
            return ExecuteDone(msg.batch_id, [], t1 - t0, time.monotonic_ns() - t1, 0, info)
        t2 = time.monotonic_ns()
        remaining = iter(results)
        ordered = [
            BackendResponse(error=input_errors[i]) if i in input_errors else next(remaining)
            for i in range(len(msg.requests))
        ]
        assert self.channel is not None
        try:
            with self.channel.writer_lock:
                responses = self.writer.write_batch(msg.batch_id, msg.requests, ordered)
        except Exception as exc:
            log.exception("writing outputs of batch %d failed", msg.batch_id)
            self.channel.release_blocks(msg.batch_id)
            info = ErrorInfo(int(ErrorCode.INTERNAL), f"cannot write outputs: {type(exc).__name__}: {exc}")
            return ExecuteDone(msg.batch_id, [], t1 - t0, t2 - t1, time.monotonic_ns() - t2, info)
        t3 = time.monotonic_ns()
        return ExecuteDone(msg.batch_id, responses, t1 - t0, t2 - t1, t3 - t2)

    def finalize_backend(self) -> None:
        if self.backend is None or self._finalized:
            return
        self._finalized = True
        try:
            self.backend.finalize()
        except Exception:
            log.exception("finalize() raised")

    def close(self) -> None:
        """Idempotent cleanup: heartbeat, shared memory (unlinked), sockets."""
        if self._closed:
            return
        self._closed = True
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.channel is not None:
            self.channel.stop()
        if self.writer is not None:
            with self.channel.writer_lock if self.channel is not None else _NO_LOCK:
                self.writer.close()
        elif self.output_prefix:
            self._unlink_own_segments()
        self.reader.close()
        if self.sock is not None:
            # Lingering lets a last reply (InitDone, FinalizeDone) reach the core before we exit.
            self.sock.close(linger=FINAL_LINGER_MS)
        if self.heartbeat is None or not self.heartbeat.alive:
            self.context.term()  # would wait forever on a socket still open in a stuck thread


def exit_if_out_of_memory(exc: BaseException) -> None:
    """Under a memory ceiling (the core sets TRITONPY_OOM_EXIT_CODE), a MemoryError anywhere in the
    exception's chain ends the worker with that code: the core reports "out of memory" and starts
    a fresh worker, instead of this one limping on with a heap that may be half-allocated."""
    code = os.environ.get("TRITONPY_OOM_EXIT_CODE", "")
    if not code.isdigit():
        return
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return
        if isinstance(seen, MemoryError):
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return
    if seen is None:
        return
    try:
        sys.stderr.write("worker out of memory (MemoryError at the model's memory ceiling); exiting\n")
        sys.stderr.flush()
    finally:
        os._exit(int(code))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tritonpy.backends.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="the core's ROUTER endpoint, e.g. ipc:///tmp/x.sock")
    parser.add_argument("--instance-name", required=True, help="model instance name; also the socket routing id")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer our parent")
    parser.add_argument(
        "--no-death-signal",
        action="store_true",
        help="do not ask the kernel for SIGKILL on parent death (tests of the polling watchdog)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Model print() output goes to stderr, which the core captures; a full stdout pipe nobody
    # reads would otherwise block the model.
    try:
        os.dup2(2, 1)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        pass
    logfmt.configure_worker_logging(0)
    if not args.no_death_signal:
        set_parent_death_signal()
    if args.parent_pid > 0 and not parent_alive(args.parent_pid):
        log.error("parent process %d is already gone", args.parent_pid)
        return 1
    worker = Worker(endpoint=args.endpoint, instance_name=args.instance_name, parent_pid=args.parent_pid)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    # Ctrl-C in a terminal reaches the whole process group; the core decides how workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    atexit.register(worker.close)
    try:
        return worker.run()
    except Exception:
        log.exception("worker failed")
        return 1
    finally:
        worker.close()


if __name__ == "__main__":
    sys.exit(main())
