"""Load-time checks of an ensemble against the configurations of its composing models.

`validate_config` (core/repository/config.py) already checks what an ensemble's own configuration can tell:
steps present, every tensor written once and used, no cycle between steps. What needs the other
models is checked here, once they are loaded and their configurations completed: every step names
an input or output its model really has, every required input of a composing model is fed, the
batch sizes fit, and each ensemble tensor has one data type and compatible shapes everywhere it
appears (ensemble input/output, producing step, consuming steps). The wording follows Triton's
`ensemble_utils.cc` so that messages users search for still match.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable, Protocol, TypeVar

from tritonpy.core.errors import ServerError, invalid
from tritonpy.core.model.request_checks import dims_to_string
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["ConfigLookup", "plan_steps", "step_version", "validate_ensemble"]


class PlannedStep(Protocol):
    """What planning needs of a step: its place in the graph and the tensors it reads and writes."""

    @property
    def index(self) -> int: ...

    @property
    def input_map(self) -> dict[str, str]: ...

    @property
    def output_map(self) -> dict[str, str]: ...


StepT = TypeVar("StepT", bound=PlannedStep)


def plan_steps(steps: Sequence[StepT], wanted: Iterable[str]) -> tuple[list[StepT], set[str]]:
    """The steps that contribute to the wanted outputs, in step order, and the tensors they need or make."""
    needed_tensors = set(wanted)
    needed: dict[int, StepT] = {}
    changed = True
    while changed:
        changed = False
        for step in steps:
            if step.index not in needed and any(t in needed_tensors for t in step.output_map.values()):
                needed[step.index] = step
                needed_tensors.update(step.input_map.values())
                changed = True
    return [needed[i] for i in sorted(needed)], needed_tensors


# (model name, version: "" = latest ready) -> the model's completed configuration, or ServerError.
ConfigLookup = Callable[[str, str], mc.ModelConfig]


def step_version(step: mc.ModelEnsembling.Step) -> str:
    """The version string the manager understands: -1 (or 0, unset) means the latest ready one."""
    return "" if step.model_version < 1 else str(step.model_version)


class _TensorFacts:
    """What is known about one ensemble tensor so far, and where each fact came from."""

    __slots__ = ("data_type", "dims", "origin")

    def __init__(self, data_type: int, dims: list[int], origin: str) -> None:
        self.data_type = data_type
        self.dims = dims
        self.origin = origin


def _full_dims(config: mc.ModelConfig, io: mc.ModelInput | mc.ModelOutput) -> list[int]:
    """The shape a request carries: the batch dimension (-1) first when the model batches."""
    return ([-1] if config.max_batch_size > 0 else []) + [int(d) for d in io.dims]


def _compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _type_name(data_type: int) -> str:
    return mc.DataType.Name(data_type) if data_type in mc.DataType.values() else str(data_type)


def _merge(ensemble: str, tensors: dict[str, _TensorFacts], name: str, facts: _TensorFacts) -> None:
    known = tensors.get(name)
    if known is None:
        tensors[name] = facts
        return
    prefix = f"in ensemble '{ensemble}', ensemble tensor '{name}': "
    if known.data_type != facts.data_type:
        raise invalid(
            prefix + f"inconsistent data type: {_type_name(known.data_type)} is inferred from {known.origin} "
            f"while {_type_name(facts.data_type)} is inferred from {facts.origin}"
        )
    if not _compatible(known.dims, facts.dims):
        raise invalid(
            prefix + f"inconsistent shape: {dims_to_string(known.dims)} is inferred from {known.origin} "
            f"while {dims_to_string(facts.dims)} is inferred from {facts.origin}"
        )
    # keep the most specific shape, so a later conflict is caught against it
    known.dims = [x if x != -1 else y for x, y in zip(known.dims, facts.dims)]


def validate_ensemble(config: mc.ModelConfig, lookup: ConfigLookup) -> None:
    """Raise ServerError (INVALID_ARG) naming the step and tensor when the ensemble cannot work."""
    name = config.name
    tensors: dict[str, _TensorFacts] = {}
    for inp in config.input:
        facts = _TensorFacts(inp.data_type, _full_dims(config, inp), f"ensemble '{name}' input")
        _merge(name, tensors, inp.name, facts)
    for out in config.output:
        facts = _TensorFacts(out.data_type, _full_dims(config, out), f"ensemble '{name}' output")
        _merge(name, tensors, out.name, facts)
    for index, step in enumerate(config.ensemble_scheduling.step):
        where = f"in ensemble '{name}', step {index}"
        model = step.model_name
        try:
            composing = lookup(model, step_version(step))
        except ServerError as exc:
            raise ServerError(exc.code, f"{where}: model '{model}' is not available: {exc.message}") from None
        if composing.max_batch_size < config.max_batch_size:
            raise invalid(
                f"ensemble '{name}' allows maximum batch size {config.max_batch_size}, but it contains model "
                f"'{model}' which only allows maximum batch size to be {composing.max_batch_size}"
            )
        inputs = {io.name: io for io in composing.input}
        outputs = {io.name: io for io in composing.output}
        for model_input, tensor in step.input_map.items():
            step_in = inputs.get(model_input)
            if step_in is None:
                raise invalid(
                    f"{where}: ensemble tensor '{tensor}' is mapping to non-existing input '{model_input}' "
                    f"in model '{model}'"
                )
            origin = f"model '{model}' input '{model_input}'"
            _merge(name, tensors, tensor, _TensorFacts(step_in.data_type, _full_dims(composing, step_in), origin))
        for inp in composing.input:
            if inp.name not in step.input_map and not inp.optional:
                raise invalid(f"{where}: input '{inp.name}' in model '{model}' is not mapped to any ensemble tensor")
        for model_output, tensor in step.output_map.items():
            step_out = outputs.get(model_output)
            if step_out is None:
                raise invalid(
                    f"{where}: ensemble tensor '{tensor}' is mapped from non-existing output '{model_output}' "
                    f"in model '{model}'"
                )
            origin = f"model '{model}' output '{model_output}'"
            _merge(name, tensors, tensor, _TensorFacts(step_out.data_type, _full_dims(composing, step_out), origin))
