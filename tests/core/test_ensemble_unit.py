"""The ensemble executor and load checks against fake composing models: dataflow order and
concurrency, which outputs are asked for, when every step response is released (on success,
error and cancellation), max_inflight_requests, statistics."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from google.protobuf import text_format

from tritonpy.core.ensemble.executor import EnsembleExecutor
from tritonpy.core.ensemble.check import validate_ensemble
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.observability.stats import ModelStats
from tritonpy.core.types import InferRequest, InferResponse, InputTensor, ResponseTensor, RequestedOutput
from tritonpy.proto import model_config_pb2 as mc

pytestmark = pytest.mark.timeout(30)

BRANCH = """
name: "branch" platform: "ensemble" max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "B_OUT" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "C_OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling {
  %s
  step [
    { model_name: "a" model_version: -1 input_map { key: "X" value: "IN" }
      output_map { key: "Y0" value: "t0" } output_map { key: "Y1" value: "t1" } },
    { model_name: "b" model_version: -1 input_map { key: "X" value: "t0" } output_map { key: "Y0" value: "B_OUT" } },
    { model_name: "c" model_version: -1 input_map { key: "X" value: "t1" } output_map { key: "Y0" value: "C_OUT" } }
  ]
}
"""


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def model_config(name: str, outputs=("Y0",), **extra) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=8, **extra)
    config.input.add(name="X", data_type=mc.TYPE_FP32, dims=[-1])
    for out in outputs:
        config.output.add(name=out, data_type=mc.TYPE_FP32, dims=[-1])
    return config


class Fake:
    """A composing model: out_k = x * factor_k; optional gate to hold it, or an error to raise."""

    def __init__(self, name: str, factors: dict[str, float], ledger: list) -> None:
        self.config = model_config(name, tuple(factors))
        self.factors = factors
        self.ledger = ledger
        self.gate: asyncio.Event | None = None
        self.error: ServerError | None = None
        self.requests: list[InferRequest] = []
        self.active = 0
        self.max_active = 0
        self.cancelled = 0
        self.entered = asyncio.Event()

    async def infer(self, request: InferRequest) -> InferResponse:
        self.requests.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise ServerError(self.error.code, self.error.message)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        x = request.inputs[0].data
        wanted = [o.name for o in request.outputs] if request.outputs is not None else list(self.factors)
        outs = [ResponseTensor(n, "FP32", list(x.shape), data=x * self.factors[n]) for n in wanted]
        record = {"model": self.config.name, "released": False}
        self.ledger.append(record)
        return InferResponse(self.config.name, "1", outputs=outs, _release=lambda: record.update(released=True))


@pytest.fixture
def world():
    ledger: list[dict] = []
    models = {"a": Fake("a", {"Y0": 2.0, "Y1": 3.0}, ledger), "b": Fake("b", {"Y0": 10.0}, ledger),
              "c": Fake("c", {"Y0": 100.0}, ledger)}

    def resolve(name: str, version: str):
        if name not in models:
            raise ServerError(ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")
        return models[name]

    return models, ledger, resolve


def executor(resolve, extra: str = "") -> tuple[EnsembleExecutor, ModelStats]:
    stats = ModelStats("branch", "1")
    return EnsembleExecutor(config=parse(BRANCH % extra), resolve=resolve, stats=stats), stats


def request(outputs=None) -> InferRequest:
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    return InferRequest("branch", inputs=[InputTensor("IN", "FP32", [1, 3], data=x)], outputs=outputs, id="r1")


async def test_branches_run_concurrently_and_results_map_back(world):
    models, ledger, resolve = world
    ens, stats = executor(resolve)
    both = asyncio.Event()
    models["b"].gate = models["c"].gate = both

    async def open_when_both_entered():
        await models["b"].entered.wait()
        await models["c"].entered.wait()
        both.set()

    opener = asyncio.create_task(open_when_both_entered())
    response = await asyncio.wait_for(ens.infer(request(), 1), 10)
    await opener
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    assert [o.name for o in response.outputs] == ["B_OUT", "C_OUT"]
    np.testing.assert_allclose(response.outputs[0].data, x * 20)
    np.testing.assert_allclose(response.outputs[1].data, x * 300)
    assert response.id == "r1"
    # a's response (intermediates only) is free as soon as b and c are done; b's and c's hold the outputs
    assert {r["model"]: r["released"] for r in ledger} == {"a": True, "b": False, "c": False}
    response.release()
    assert all(r["released"] for r in ledger)
    assert stats.success.count == 1 and stats.fail.count == 0 and stats.queue.ns == 0


async def test_only_needed_steps_run_and_only_consumed_outputs_are_asked(world):
    models, ledger, resolve = world
    ens, _ = executor(resolve)
    response = await ens.infer(request([RequestedOutput("B_OUT")]), 1)
    assert [o.name for o in response.outputs] == ["B_OUT"]
    assert models["c"].requests == []
    assert [o.name for o in models["a"].requests[0].outputs] == ["Y0"]
    assert models["a"].requests[0].id == "r1"
    response.release()
    assert all(r["released"] for r in ledger)


async def test_failing_step_is_named_cancels_the_others_and_releases_all(world):
    models, ledger, resolve = world
    ens, stats = executor(resolve)
    models["b"].gate = asyncio.Event()  # never opens: b is still running when c fails
    models["c"].error = ServerError(ErrorCode.UNAVAILABLE, "c is down")
    with pytest.raises(ServerError) as err:
        await ens.infer(request(), 1)
    assert err.value.code == ErrorCode.UNAVAILABLE
    assert err.value.message == "in ensemble 'branch', step 2 (model 'c'): c is down"
    assert models["b"].cancelled == 1
    assert ledger and all(r["released"] for r in ledger)
    assert stats.fail.count == 1 and stats.success.count == 0


async def test_unknown_composing_model_at_run_time_names_the_step(world):
    models, ledger, resolve = world
    del models["b"]
    ens, _ = executor(resolve)
    with pytest.raises(ServerError) as err:
        await ens.infer(request(), 1)
    assert err.value.code == ErrorCode.NOT_FOUND
    assert err.value.message.startswith("in ensemble 'branch', step 1 (model 'b'): Request for unknown model")
    assert all(r["released"] for r in ledger)


async def test_cancelling_the_caller_cancels_steps_and_releases_all(world):
    models, ledger, resolve = world
    ens, stats = executor(resolve)
    models["b"].gate = asyncio.Event()
    models["c"].gate = asyncio.Event()
    task = asyncio.create_task(ens.infer(request(), 1))
    await models["b"].entered.wait()
    await models["c"].entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert models["b"].cancelled == 1 and models["c"].cancelled == 1
    assert [r["model"] for r in ledger] == ["a"] and ledger[0]["released"]
    assert stats.failures_by_reason == {"CANCELED": 1}


async def test_max_inflight_requests_bounds_each_step(world):
    models, ledger, resolve = world
    ens, _ = executor(resolve, "max_inflight_requests: 2")
    gate = models["b"].gate = asyncio.Event()
    tasks = [asyncio.create_task(ens.infer(request(), 1)) for _ in range(5)]
    for _ in range(50):
        await asyncio.sleep(0)
    assert models["b"].active == 2 and len(models["b"].requests) == 2
    gate.set()
    responses = await asyncio.gather(*tasks)
    assert models["b"].max_active == 2 and len(models["b"].requests) == 5
    for r in responses:
        r.release()
    assert len(ledger) == 15 and all(r["released"] for r in ledger)


def test_validate_ensemble_accepts_a_consistent_graph(world):
    _, _, resolve = world
    looked_up: list[str] = []

    def lookup(name: str, version: str):
        looked_up.append(name)
        return resolve(name, version).config

    config = parse(BRANCH % "")
    before = config.SerializeToString()
    assert validate_ensemble(config, lookup) is None
    assert looked_up == ["a", "b", "c"]  # every step's model was checked, in step order
    assert config.SerializeToString() == before


def test_validate_ensemble_accepts_a_decoupled_step(world):
    """As Triton: a decoupled composing model is allowed (the ensemble then streams; see
    tests/e2e/test_ensemble_decoupled.py)."""
    models, _, resolve = world
    models["b"].config.model_transaction_policy.decoupled = True
    validate_ensemble(parse(BRANCH % ""), lambda name, version: resolve(name, version).config)


def test_validate_ensemble_non_batching_ensemble_over_batching_models(world):
    """Shapes compare as requests carry them: a non-batching ensemble with dims [-1, -1] can feed a
    model that batches dims [-1]; dims [-1] cannot (the batch dimension would be missing)."""
    _, _, resolve = world
    text = (BRANCH % "").replace("max_batch_size: 8", "max_batch_size: 0")

    def lookup(name, version):
        return resolve(name, version).config

    validate_ensemble(parse(text.replace("dims: [ -1 ]", "dims: [ -1, -1 ]")), lookup)
    with pytest.raises(ServerError) as err:
        validate_ensemble(parse(text), lookup)
    expected = "ensemble tensor 'IN': inconsistent shape: [-1] is inferred from ensemble 'branch' input"
    assert expected in err.value.message
