"""Ensembles with decoupled composing models: 0..N responses per request.

A decoupled step may answer one request with many responses. Each of its responses carries the
rest of the graph on its own: the steps downstream run once per response, and every time all the
outputs the client asked for exist, that set goes to the client as one response of the ensemble.
So an ensemble "tokenizer -> decoupled generator -> detokenizer" streams one detokenized response
per generated one, as Triton's ensemble scheduler does.

Steps run one at a time per branch, in graph order (a branch is the state that one response of a
decoupled step started); branches follow each other in the order their responses came. Tensors
are copied out of each step's response as soon as it arrives and the response is released at once,
so nothing in the workers' shared memory waits on a branch that is still running. Client shared
memory for the ensemble's outputs is not offered on this path (it is refused with a clear error).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from tritonpy.core.ensemble.check import plan_steps
from tritonpy.core.errors import ServerError, internal, invalid
from tritonpy.core.instance.streams import ResponseStream, run_decoupled
from tritonpy.core.types import InferRequest, InferResponse, InputTensor, RequestedOutput, ResponseTensor

if TYPE_CHECKING:
    from tritonpy.core.ensemble.executor import EnsembleExecutor, _Step

# ensemble tensor -> (datatype, shape, data)
_Values = dict[str, tuple[str, list[int], "np.ndarray | None"]]


class StreamRun:
    """One request through an ensemble that has a decoupled step; responses go to `request.stream`."""

    def __init__(self, ensemble: "EnsembleExecutor", request: InferRequest, version: str) -> None:
        self.ensemble = ensemble
        self.request = request
        self.version = version
        wanted = request.outputs if request.outputs is not None else [
            RequestedOutput(name) for name in ensemble.output_names
        ]
        if any(o.shm is not None for o in wanted):
            raise invalid(f"ensemble '{ensemble.name}' has a decoupled step: its outputs cannot be written to "
                          "client shared memory")
        self.wanted = [o.name for o in wanted]
        self.steps, _ = plan_steps(ensemble.steps, self.wanted)

    async def execute(self) -> None:
        values: _Values = {t.name: (t.datatype, list(t.shape), t.data) for t in self.request.inputs}
        if any(t.shm is not None for t in self.request.inputs):
            raise invalid(f"ensemble '{self.ensemble.name}' has a decoupled step: its inputs cannot come from "
                          "client shared memory")
        await self._flow(values, frozenset())
        self.request.stream.push(None, True)

    async def _flow(self, values: _Values, done: frozenset[int]) -> None:
        step = next((s for s in self.steps if s.index not in done
                     and all(t in values or self._optional_input(t) for t in s.input_map.values())), None)
        if step is None:
            if all(name in values for name in self.wanted):
                self._emit(values)
            return
        model = self.ensemble._resolve(step.model, step.version)
        request = self._step_request(step, values)
        try:
            if model.config.model_transaction_policy.decoupled:
                request.stream = ResponseStream()
                label = f"{self.ensemble.name}:step{step.index}:{step.model}"
                async with contextlib.aclosing(run_decoupled(model.infer(request), request.stream, label)) as stream:
                    async for response, _final in stream:
                        if isinstance(response, ServerError):
                            raise response
                        if response is not None:
                            await self._flow(self._with(values, step, response), done | {step.index})
            else:
                await self._flow(self._with(values, step, await model.infer(request)), done | {step.index})
        except ServerError as exc:
            if exc.message.startswith(f"in ensemble '{self.ensemble.name}'"):
                raise
            raise ServerError(
                exc.code, f"in ensemble '{self.ensemble.name}', step {step.index} (model '{step.model}'): {exc.message}"
            ) from None

    def _is_ensemble_input(self, tensor: str) -> bool:
        return any(io.name == tensor for io in self.ensemble.config.input)

    def _optional_input(self, tensor: str) -> bool:
        """An ensemble input the client left out: its readers run without it."""
        return self._is_ensemble_input(tensor) and all(t.name != tensor for t in self.request.inputs)

    def _step_request(self, step: "_Step", values: _Values) -> InferRequest:
        req = self.request
        inputs = [InputTensor(model_input, values[t][0], list(values[t][1]), data=values[t][2])
                  for model_input, t in step.input_map.items() if t in values]
        outputs = [RequestedOutput(m) for m in step.output_map]
        return InferRequest(
            model_name=step.model, model_version=step.version, id=req.id, inputs=inputs, outputs=outputs,
            parameters=dict(req.parameters), sequence_id=req.sequence_id, sequence_start=req.sequence_start,
            sequence_end=req.sequence_end, priority=req.priority, timeout_us=req.timeout_us,
        )

    def _with(self, values: _Values, step: "_Step", response: InferResponse) -> _Values:
        """`values` plus the step's outputs, copied out of `response`, which is released."""
        try:
            produced = {o.name: o for o in response.outputs}
            out = dict(values)
            for model_output, tensor in step.output_map.items():
                o = produced.get(model_output)
                if o is None:
                    raise internal(f"in ensemble '{self.ensemble.name}', step {step.index} (model "
                                   f"'{step.model}'): the model did not return output '{model_output}'")
                data = None if o.data is None else np.array(o.data, copy=True)
                out[tensor] = (o.datatype, list(o.shape), data)
            return out
        finally:
            response.release()

    def _emit(self, values: _Values) -> None:
        outputs = [ResponseTensor(name, values[name][0], list(values[name][1]), data=values[name][2])
                   for name in self.wanted]
        self.request.stream.push(
            InferResponse(model_name=self.ensemble.name, model_version=self.version, id=self.request.id,
                          outputs=outputs),
            False,
        )


__all__ = ["StreamRun"]
