"""Ensembles: run a request through a graph of composing models, as dataflow.

An ensemble has no worker of its own. Each request becomes a small dataflow run: a step is sent to
its composing model (through that model's normal path: validation, scheduler, batching, statistics)
as soon as every ensemble tensor it reads exists, so independent steps run concurrently. A step
asks only for the outputs something downstream needs, and steps that feed nothing the client asked
for are not run at all.

Tensors between steps are not copied by the core: a step's outputs are numpy views of the worker's
output shared memory, handed as they are to the consumer step, which copies them once into its own
worker's input arena. The producing response is therefore held (not released) until every consumer
step has finished; responses that carry final outputs are held until the ensemble's response is
released. Whatever happens (an error in any step, the caller cancelled), every held response is
released and outstanding steps are cancelled, so no shared memory is left reserved.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Awaitable, Callable, Protocol

import numpy as np

from tritonpy.core.ensemble.check import plan_steps, step_version
from tritonpy.core.ensemble.streaming import StreamRun
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferRequest, InferResponse, InputTensor, ResponseTensor, RequestedOutput, ShmRef
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["EnsembleExecutor", "ModelResolver"]

log = logging.getLogger("tritonpy.core.ensemble.executor")


class _Servable(Protocol):
    config: mc.ModelConfig

    def infer(self, request: InferRequest) -> Awaitable[InferResponse]: ...


# (model name, version: "" = latest ready) -> something to infer with; raises ServerError.
ModelResolver = Callable[[str, str], _Servable]


@dataclasses.dataclass(slots=True)
class _Step:
    index: int
    model: str
    version: str
    input_map: dict[str, str]  # composing model input -> ensemble tensor
    output_map: dict[str, str]  # composing model output -> ensemble tensor
    limit: asyncio.Semaphore | None  # max_inflight_requests


class _Held:
    """One step's response, kept alive while consumers (or the final response) still read it."""

    __slots__ = ("response", "refs")

    def __init__(self, response: InferResponse, refs: int) -> None:
        self.response = response
        self.refs = refs

    def drop(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            self.response.release()


@dataclasses.dataclass(slots=True)
class _Value:
    """An ensemble tensor that exists: its data (or client shared-memory slice) and its owner."""

    datatype: str
    shape: list[int]
    data: np.ndarray | None
    shm: ShmRef | None
    holder: _Held | None  # None for the request's own inputs


class EnsembleExecutor:
    """Serves one ensemble model version: `infer` runs the steps of one request."""

    def __init__(self, *, config: mc.ModelConfig, resolve: ModelResolver, stats: ModelStats) -> None:
        self.name = config.name
        self.config = config
        self.version = ""  # set by the model version that serves it (for streamed responses)
        self._resolve = resolve
        self._stats = stats
        cap = int(config.ensemble_scheduling.max_inflight_requests)
        self.steps = [
            _Step(
                index=i, model=s.model_name, version=step_version(s), input_map=dict(s.input_map),
                output_map=dict(s.output_map), limit=asyncio.Semaphore(cap) if cap > 0 else None,
            )
            for i, s in enumerate(config.ensemble_scheduling.step)
        ]
        self.output_names = [o.name for o in config.output]

    async def infer(self, request: InferRequest, batch_size: int) -> InferResponse:
        """Run the request's steps; the response holds the step responses its outputs view.

        With a decoupled step (then the ensemble is decoupled too and `request.stream` is set) the
        responses go to the stream as they come (core/ensemble/streaming.py) and an empty
        placeholder is returned, as a decoupled model's execution returns."""
        started = time.monotonic_ns()
        try:
            if request.stream is not None and self.config.model_transaction_policy.decoupled:
                await StreamRun(self, request, self.version).execute()
                response = InferResponse(model_name=self.name, model_version=self.version, id=request.id)
            else:
                response = await _Run(self, request).execute()
        except asyncio.CancelledError:
            self._stats.record_failure(time.monotonic_ns() - request.arrival_ns, "CANCELED")
            raise
        except ServerError:
            self._stats.record_failure(time.monotonic_ns() - request.arrival_ns, "BACKEND")
            raise
        except Exception as exc:  # a bug: answer the client, keep serving
            log.exception("ensemble '%s' failed", self.name)
            self._stats.record_failure(time.monotonic_ns() - request.arrival_ns, "OTHER")
            raise ServerError(ErrorCode.INTERNAL, f"in ensemble '{self.name}': {type(exc).__name__}: {exc}") from exc
        now = time.monotonic_ns()
        # No queue of its own: the time is spent in the composing models (counted there).
        self._stats.record_request(now - request.arrival_ns, 0, 0, 0, 0)
        self._stats.inference_count += max(1, batch_size)
        self._stats.execution_count += 1
        self._stats.last_inference_ms = int(time.time() * 1000)
        log.debug("ensemble '%s' request '%s' done in %.3f ms", self.name, request.id, (now - started) / 1e6)
        return response


class _Run:
    """The dataflow state of one ensemble request."""

    def __init__(self, ensemble: EnsembleExecutor, request: InferRequest) -> None:
        self.ensemble = ensemble
        self.request = request
        self.values: dict[str, _Value] = {}
        self.held: list[_Held] = []
        self.tasks: dict[asyncio.Task[InferResponse], _Step] = {}
        self.started: set[int] = set()
        wanted = request.outputs if request.outputs is not None else [
            RequestedOutput(name) for name in ensemble.output_names
        ]
        self.wanted: dict[str, RequestedOutput] = {o.name: o for o in wanted}
        self.needed_steps, self.needed_tensors = plan_steps(self.ensemble.steps, self.wanted)
        # per needed step: how many of its inputs do not exist yet
        self.missing = {s.index: set(s.input_map.values()) for s in self.needed_steps}
        # per ensemble tensor: the needed steps that read it
        self.readers: dict[str, list[_Step]] = {}
        for step in self.needed_steps:
            for tensor in set(step.input_map.values()):
                self.readers.setdefault(tensor, []).append(step)

    # --- running -----------------------------------------------------------------------------
    async def execute(self) -> InferResponse:
        try:
            for tensor in self.request.inputs:
                self.values[tensor.name] = _Value(tensor.datatype, list(tensor.shape), tensor.data, tensor.shm, None)
            # Optional inputs the client left out count as there (absent) so their readers can start.
            for io in self.ensemble.config.input:
                self._arrived(io.name)
            while self.tasks:
                done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = self.tasks.pop(task)
                    self._finished(step, task)
            missing = [n for n in self.wanted if n not in self.values]
            if missing:  # validate_config makes this unreachable; keep the promise of an answer
                raise ServerError(
                    ErrorCode.INTERNAL, f"in ensemble '{self.ensemble.name}': outputs {missing} were never produced"
                )
            return self._response()
        except BaseException:
            await self._abort()
            raise

    def _arrived(self, tensor: str) -> None:
        """A tensor now exists: start every step that was waiting only for it."""
        for step in self.readers.get(tensor, ()):
            left = self.missing[step.index]
            left.discard(tensor)
            if not left and step.index not in self.started:
                self.started.add(step.index)
                name = f"tritonpy-ensemble[{self.ensemble.name}:step{step.index}:{step.model}]"
                task = asyncio.get_running_loop().create_task(self._run_step(step), name=name)
                self.tasks[task] = step

    async def _run_step(self, step: _Step) -> InferResponse:
        request = self._step_request(step)
        try:
            model = self.ensemble._resolve(step.model, step.version)
            if step.limit is None:
                return await model.infer(request)
            async with step.limit:
                return await model.infer(request)
        except ServerError as exc:
            raise ServerError(
                exc.code, f"in ensemble '{self.ensemble.name}', step {step.index} (model '{step.model}'): {exc.message}"
            ) from None

    def _step_request(self, step: _Step) -> InferRequest:
        req = self.request
        inputs = []
        for model_input, tensor in step.input_map.items():
            v = self.values.get(tensor)
            if v is None:  # an optional ensemble input the client did not send
                continue
            inputs.append(InputTensor(model_input, v.datatype, list(v.shape), data=v.data, shm=v.shm))
        outputs = []
        for model_output, tensor in step.output_map.items():
            if tensor not in self.needed_tensors:
                continue
            final = self.wanted.get(tensor)
            # A final output the client wants in its shared memory is written there by the step.
            shm = final.shm if final is not None else None
            outputs.append(RequestedOutput(model_output, shm=shm))
        return InferRequest(
            model_name=step.model, model_version=step.version, id=req.id, inputs=inputs, outputs=outputs,
            parameters=dict(req.parameters), sequence_id=req.sequence_id, sequence_start=req.sequence_start,
            sequence_end=req.sequence_end, priority=req.priority, timeout_us=req.timeout_us,
        )

    def _finished(self, step: _Step, task: asyncio.Task[InferResponse]) -> None:
        """Account for a finished step: free what it read, publish what it wrote (or fail)."""
        for holder in {id(v.holder): v.holder for t in set(step.input_map.values())
                       if (v := self.values.get(t)) is not None and v.holder is not None}.values():
            holder.drop()
        response: InferResponse = task.result()  # raises the step's error
        produced = {o.name: o for o in response.outputs}
        written = [t for m, t in step.output_map.items() if t in self.needed_tensors and m in produced]
        refs = len({s.index for t in written for s in self.readers.get(t, ())})
        refs += 1 if any(t in self.wanted for t in written) else 0
        holder = _Held(response, refs)
        self.held.append(holder)
        if refs == 0:
            response.release()
        for model_output, tensor in step.output_map.items():
            out = produced.get(model_output)
            if tensor not in self.needed_tensors:
                continue
            if out is None:
                raise ServerError(
                    ErrorCode.INTERNAL,
                    f"in ensemble '{self.ensemble.name}', step {step.index} (model '{step.model}'): "
                    f"the model did not return output '{model_output}'",
                )
            self.values[tensor] = _Value(out.datatype, list(out.shape), out.data, out.shm, holder)
        for tensor in written:
            self._arrived(tensor)

    def _response(self) -> InferResponse:
        outputs = []
        for name in self.wanted:
            v = self.values[name]
            outputs.append(ResponseTensor(name, v.datatype, list(v.shape), data=v.data, shm=v.shm))
        held = self.held
        self.held = []

        def release() -> None:
            for h in held:
                h.response.release()

        return InferResponse(
            model_name=self.ensemble.name, model_version="", id=self.request.id, outputs=outputs, _release=release
        )

    async def _abort(self) -> None:
        """Cancel outstanding steps, release every response held or arriving late."""
        pending = list(self.tasks)
        self.tasks.clear()
        for task in pending:
            task.cancel()
        try:
            if pending:
                # wait for them: a step's input may still be copied from a held response
                await asyncio.wait(pending)
        finally:
            for task in pending:
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result().release()
            for h in self.held:
                h.response.release()
            self.held = []
