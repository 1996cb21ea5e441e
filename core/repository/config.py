"""Model configuration: read `config.pbtxt`, and check a completed configuration the way Triton does.

The filling-in steps (backend detection, backend completion, core defaults) live in
`tritonpy.core.repository.autocomplete` and are re-exported here, so callers use one module:

    config = load_config(source, autocomplete=True)        # parse + detect backend/platform
    config = apply_backend_completion(config, completed)   # what the worker's backend filled in
    config = finalize_config(config, autocomplete=True)    # Triton core defaults
    validate_config(config)                                 # raises ConfigError

Every error is a `ConfigError` (INVALID_ARG) whose message names the model and the field.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from google.protobuf import text_format

from tritonpy.core.repository.autocomplete import (
    DEFAULT_MODEL_FILENAMES,
    ENSEMBLE_PLATFORM,
    PLATFORM_BACKEND,
    ConfigError,
    apply_backend_completion,
    backend_for,
    config_from_json,
    finalize_config,
    resolve_backend,
)
from tritonpy.proto import model_config_pb2 as mc

if TYPE_CHECKING:
    from tritonpy.core.repository.scan import ModelSource

log = logging.getLogger("tritonpy.core.repository.config")

__all__ = [
    "ConfigError",
    "DEFAULT_MODEL_FILENAMES",
    "ENSEMBLE_PLATFORM",
    "apply_backend_completion",
    "backend_for",
    "config_from_json",
    "finalize_config",
    "load_config",
    "parse_config_text",
    "resolve_backend",
    "validate_config",
]

CONFIG_FILENAME = "config.pbtxt"
_UNKNOWN_DTYPE = re.compile(r'Enum type "inference\.DataType" has no value named (\w+)')
# Unknown data type names are swapped for numbers no DataType uses, so that parsing can go on and
# the error can name the tensor instead of only a line number.
_SENTINEL_BASE = 1 << 20


def parse_config_text(text: str, *, model: str, filename: str = CONFIG_FILENAME) -> mc.ModelConfig:
    """Parse protobuf text format; errors carry the file, line and column (`config.pbtxt:3:14`)."""
    lines = text.split("\n")
    unknown: dict[int, tuple[str, str]] = {}  # sentinel -> (type name, where)
    while True:
        config = mc.ModelConfig()
        try:
            text_format.Parse("\n".join(lines), config)
            break
        except text_format.ParseError as exc:
            line, col = exc.GetLine(), exc.GetColumn()
            where = filename if line is None else f"{filename}:{line}:{col}"
            detail = re.sub(r"^\d+:\d+ : ", "", str(exc))  # we say where ourselves
            bad = _UNKNOWN_DTYPE.search(detail)
            if bad is None or line is None or col is None or len(unknown) >= 64:
                raise ConfigError(f"model '{model}': {where}: {detail}") from None
            sentinel = _SENTINEL_BASE + len(unknown)
            unknown[sentinel] = (bad.group(1), where)
            row, start = lines[line - 1], col - 1
            lines[line - 1] = row[:start] + str(sentinel) + row[start + len(bad.group(1)):]
        except (ValueError, TypeError) as exc:
            # protobuf raises these (not ParseError) for values its fields cannot hold, e.g. an
            # integer past uint64 (found by scripts/fuzz.py); they are the author's mistake too.
            raise ConfigError(f"model '{model}': {filename}: {exc}") from None
    if unknown:
        for kind, tensors in (("input", config.input), ("output", config.output)):
            for io in tensors:
                if io.data_type in unknown:
                    type_name, where = unknown[io.data_type]
                    raise ConfigError(f"model '{model}': {kind} '{io.name}': unknown data type '{type_name}' ({where})")
        type_name, where = next(iter(unknown.values()))
        raise ConfigError(f"model '{model}': {where}: unknown data type '{type_name}'")
    return config


def load_config(source: "ModelSource", *, config_name: str = "", autocomplete: bool = True) -> mc.ModelConfig:
    """Read a model's configuration and detect its backend/platform.

    `configs/<config_name>.pbtxt` wins over `config.pbtxt` when it exists (`--model-config-name`).
    A missing configuration is fine with auto-complete on (the backend fills it in later), an error
    with it off. An empty name becomes the directory name; any other name must equal it.
    """
    model_dir = Path(source.path)
    path = model_dir / CONFIG_FILENAME
    if config_name:
        custom = model_dir / "configs" / f"{config_name}.pbtxt"
        if custom.is_file():
            path = custom
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model '{source.name}': cannot read {path.name}: {exc}") from None
        shown = path.relative_to(model_dir).as_posix()
        config = parse_config_text(text, model=source.name, filename=shown)
    elif autocomplete:
        config = mc.ModelConfig()
    else:
        raise ConfigError(
            f"model '{source.name}': no {CONFIG_FILENAME} in {model_dir} and auto-complete is disabled"
        )
    if config.name and config.name != source.name:
        raise ConfigError(
            f"model '{source.name}': unexpected directory name '{source.name}' for model '{config.name}', "
            f"directory name must equal model name"
        )
    return resolve_backend(config, source)


# ---- validation -----------------------------------------------------------------------------

_DTYPE = mc.DataType
_KIND = mc.ModelInstanceGroup
_SEQ_CONTROL = mc.ModelSequenceBatching.Control
_BOOL_CONTROLS = (
    _SEQ_CONTROL.CONTROL_SEQUENCE_START, _SEQ_CONTROL.CONTROL_SEQUENCE_END, _SEQ_CONTROL.CONTROL_SEQUENCE_READY
)
_CORRID_TYPES = (_DTYPE.TYPE_UINT64, _DTYPE.TYPE_INT64, _DTYPE.TYPE_UINT32, _DTYPE.TYPE_INT32, _DTYPE.TYPE_STRING)


def validate_config(config: mc.ModelConfig) -> None:
    """Check a completed, finalized configuration; raise ConfigError on the first problem."""
    name = config.name
    if not name:
        raise ConfigError("model configuration must specify 'name'")
    p = f"model '{name}': "
    _check_backend(config, p)
    if config.max_batch_size < 0:
        raise ConfigError(p + f"'max_batch_size' must be non-negative, got {config.max_batch_size}")
    _check_version_policy(config, p)
    _check_io(config, p)
    _check_batch_io(config, p)
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling == "dynamic_batching":
        _check_dynamic_batching(config, p)
    elif scheduling == "sequence_batching":
        _check_sequence_batching(config, p)
    if scheduling == "ensemble_scheduling" or config.platform == ENSEMBLE_PLATFORM:
        _check_ensemble(config, p)
    else:
        _check_instance_groups(config, p)
    if config.model_transaction_policy.decoupled and config.response_cache.enable:
        raise ConfigError(p + "response_cache: the response cache does not support decoupled models")
    _check_model_metrics(config, p)


def _check_backend(config: mc.ModelConfig, p: str) -> None:
    if config.platform == ENSEMBLE_PLATFORM:
        if config.backend:
            raise ConfigError(p + f"an ensemble must have platform '{ENSEMBLE_PLATFORM}' and an empty backend, "
                              f"got backend '{config.backend}'")
        return
    if not config.backend:
        if config.platform:
            raise ConfigError(p + f"unexpected platform type '{config.platform}'")
        raise ConfigError(
            p + "must specify 'platform' or 'backend' (no configuration names one and no known model "
            "file such as model.onnx or model.py was found in the version directory)"
        )
    expected = PLATFORM_BACKEND.get(config.platform)
    known_backend = config.backend in set(PLATFORM_BACKEND.values())
    if known_backend and expected != config.backend:
        raise ConfigError(
            p + f"unexpected 'platform' and 'backend' pair, got: '{config.platform}', '{config.backend}'"
        )


def _check_version_policy(config: mc.ModelConfig, p: str) -> None:
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        if not policy.specific.versions:
            raise ConfigError(p + "version_policy: 'specific' must list at least one version")
        bad = [v for v in policy.specific.versions if v < 0]
        if bad:
            raise ConfigError(p + f"version_policy: versions must be >= 0, got {bad}")


def _check_dims(p: str, label: str, dims: Sequence[int], what: str = "dimension") -> None:
    for d in dims:
        if d < 1 and d != -1:
            raise ConfigError(
                p + f"{label}: {what} must be integer >= 1, or -1 to indicate a variable-size dimension, "
                f"got {list(dims)}"
            )


def _element_chunks(dims: Sequence[int]) -> list[int]:
    """Element counts of the runs between variable (-1) dimensions: [2,4,-1,6] -> [8, 6]."""
    chunks: list[int] = []
    current = 1
    for d in dims:
        if d == -1:
            chunks.append(current)
            current = 1
        else:
            current *= d
    chunks.append(current)
    return chunks


def _check_tensor(config: mc.ModelConfig, p: str, io: mc.ModelInput | mc.ModelOutput, kind: str) -> None:
    label = f"{kind} '{io.name}'"
    if io.data_type == _DTYPE.TYPE_INVALID:
        raise ConfigError(p + f"{label}: must specify 'data_type'")
    if io.data_type not in mc.DataType.values():
        raise ConfigError(p + f"{label}: unknown data type {io.data_type}")
    if not io.dims:
        raise ConfigError(p + f"{label}: must specify 'dims'")
    _check_dims(p, label, io.dims)
    if io.HasField("reshape"):
        shape = io.reshape.shape
        if not shape and config.max_batch_size == 0:
            raise ConfigError(
                p + f"{label}: cannot have empty reshape for non-batching model as scalar tensors are not supported"
            )
        _check_dims(p, label, shape, "reshape dimensions")
        dims_chunks, reshape_chunks = _element_chunks(io.dims), _element_chunks(shape)
        if not shape:
            if dims_chunks != [1]:
                raise ConfigError(p + f"{label}: has different size for dims and reshape")
        elif len(dims_chunks) != len(reshape_chunks):
            raise ConfigError(
                p + f"{label}: has different number of variable-size dimensions for dims and reshape"
            )
        elif dims_chunks != reshape_chunks:
            raise ConfigError(p + f"{label}: has different size for dims and reshape")
    if io.is_shape_tensor and config.platform != "tensorrt_plan":
        raise ConfigError(p + f"{label}: shape tensors are only supported for TensorRT platform")
    if io.is_non_linear_format_io:
        if config.platform != "tensorrt_plan":
            raise ConfigError(p + f"{label}: non-linear IO format is only supported for the TensorRT platform")
        if len(io.dims) != 3:
            raise ConfigError(p + f"{label}: non-linear IO format requires 3 dims")


def _check_named(config: mc.ModelConfig, p: str, io: mc.ModelInput | mc.ModelOutput, kind: str, seen: set[str]) -> None:
    if not io.name:
        raise ConfigError(p + f"{kind}: must specify 'name'")
    if io.name in seen:
        raise ConfigError(p + f"{kind} '{io.name}': name is used more than once")
    seen.add(io.name)
    _check_tensor(config, p, io, kind)


def _check_io(config: mc.ModelConfig, p: str) -> None:
    seen: set[str] = set()
    for inp in config.input:
        _check_named(config, p, inp, "input", seen)
        if inp.format in (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW):
            if len(inp.dims) != 3:
                raise ConfigError(p + f"input '{inp.name}': model input NHWC/NCHW require 3 dims")
    seen = set()
    for out in config.output:
        _check_named(config, p, out, "output", seen)
    for out in config.output:
        if out.label_filename and Path(out.label_filename).name != out.label_filename:
            raise ConfigError(
                p + f"output '{out.name}': label_filename must be a file name in the model directory, "
                f"got '{out.label_filename}'"
            )


def _check_batch_io(config: mc.ModelConfig, p: str) -> None:
    inputs = {i.name for i in config.input}
    outputs = {o.name for o in config.output}
    for bi in config.batch_input:
        kind = mc.BatchInput.Kind.Name(bi.kind)
        if len(bi.source_input) != 1:
            raise ConfigError(p + f"batch_input: kind '{kind}' expects 1 source input, got {len(bi.source_input)}")
        if bi.data_type not in (_DTYPE.TYPE_INT32, _DTYPE.TYPE_FP32):
            raise ConfigError(p + "batch_input: data type must be TYPE_INT32 or TYPE_FP32")
        for src in bi.source_input:
            if src not in inputs:
                raise ConfigError(p + f"batch_input: unknown source input name '{src}'")
    for bo in config.batch_output:
        if len(bo.source_input) != 1:
            raise ConfigError(
                p + f"batch_output: kind '{mc.BatchOutput.Kind.Name(bo.kind)}' expects 1 source input, "
                f"got {len(bo.source_input)}"
            )
        for src in bo.source_input:
            if src not in inputs:
                raise ConfigError(p + f"batch_output: unknown source input name '{src}'")
        targets: set[str] = set()
        for target in bo.target_name:
            if target not in outputs:
                raise ConfigError(p + f"batch_output: unknown target output name '{target}'")
            if target in targets:
                raise ConfigError(p + f"batch_output: target output name '{target}' can only be specified once")
            targets.add(target)


def _check_dynamic_batching(config: mc.ModelConfig, p: str) -> None:
    db = config.dynamic_batching
    for size in db.preferred_batch_size:
        if size <= 0:
            raise ConfigError(p + f"dynamic_batching: preferred_batch_size must be positive, got {size}")
        if size > config.max_batch_size:
            raise ConfigError(
                p + f"dynamic_batching: preferred_batch_size {size} must be <= max_batch_size "
                f"{config.max_batch_size}"
            )
    levels = db.priority_levels
    if levels:
        if not 1 <= db.default_priority_level <= levels:
            raise ConfigError(
                p + f"dynamic_batching: default_priority_level must be in range [1, {levels}], "
                f"got {db.default_priority_level}"
            )
        for level in db.priority_queue_policy:
            if not 1 <= level <= levels:
                raise ConfigError(
                    p + f"dynamic_batching: priority_queue_policy level {level} must be in range [1, {levels}]"
                )
    elif db.priority_queue_policy:
        raise ConfigError(p + "dynamic_batching: priority_queue_policy needs priority_levels > 0")
    if db.preserve_ordering:
        if levels > 1:
            raise ConfigError(
                p + "dynamic_batching: only one priority level is allowed when 'preserve_ordering' is true"
            )
        policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
        for policy in policies:
            if policy.default_timeout_microseconds and policy.timeout_action == mc.ModelQueuePolicy.DELAY:
                raise ConfigError(
                    p + "dynamic_batching: queue policy can not have DELAY as timeout action when "
                    "'preserve_ordering' is true"
                )


def _check_sequence_batching(config: mc.ModelConfig, p: str) -> None:
    seq = config.sequence_batching
    if config.response_cache.enable:
        raise ConfigError(p + "response_cache: the response cache does not support sequence batching")
    seen_tensors: set[str] = set()
    seen_kinds: set[int] = set()
    for ci in seq.control_input:
        if not ci.name:
            raise ConfigError(p + "sequence_batching: control tensor must have a name")
        if ci.name in seen_tensors:
            raise ConfigError(p + f"sequence_batching: control tensor '{ci.name}' is specified for multiple controls")
        seen_tensors.add(ci.name)
        for c in ci.control:
            kind = _SEQ_CONTROL.Kind.Name(c.kind)
            if c.kind in seen_kinds:
                raise ConfigError(p + f"sequence_batching: multiple {kind} tensors")
            seen_kinds.add(c.kind)
            lists = [n for n in ("int32_false_true", "fp32_false_true", "bool_false_true") if len(getattr(c, n))]
            if c.kind in _BOOL_CONTROLS:
                if len(lists) != 1:
                    raise ConfigError(
                        p + f"sequence_batching: {kind} must specify exactly one of 'int32_false_true', "
                        "'fp32_false_true' or 'bool_false_true'"
                    )
                if len(getattr(c, lists[0])) != 2:
                    raise ConfigError(p + f"sequence_batching: {kind} '{lists[0]}' must have exactly 2 entries")
            else:  # CORRID
                if lists:
                    raise ConfigError(p + f"sequence_batching: {kind} must not specify '{lists[0]}'")
                if c.data_type not in _CORRID_TYPES:
                    raise ConfigError(
                        p + f"sequence_batching: unexpected data type {mc.DataType.Name(c.data_type)} for {kind}; "
                        "allowed are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
                    )
    for state in seq.state:
        label = f"sequence_batching state '{state.input_name}'"
        if not state.input_name or not state.output_name:
            raise ConfigError(p + "sequence_batching: a state must name both 'input_name' and 'output_name'")
        if state.data_type == _DTYPE.TYPE_INVALID:
            raise ConfigError(p + f"{label}: must specify 'data_type'")
        _check_dims(p, label, state.dims)
    if seq.HasField("oldest"):
        for size in seq.oldest.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                raise ConfigError(
                    p + f"sequence_batching: preferred batch size {size} must be positive and <= max_batch_size "
                    f"{config.max_batch_size}"
                )
    if seq.HasField("direct"):
        util = seq.direct.minimum_slot_utilization
        if util < 0.0 or util > 1.0:
            raise ConfigError(
                p + f"sequence_batching: minimum slot utilization must be in range (0.0, 1.0], got {util}"
            )


def _check_instance_groups(config: mc.ModelConfig, p: str) -> None:
    if not config.instance_group:
        raise ConfigError(p + "must specify one or more 'instance group's")
    names: set[str] = set()
    for group in config.instance_group:
        label = f"instance group '{group.name}'"
        if group.name in names:
            raise ConfigError(p + f"{label}: name is used more than once")
        names.add(group.name)
        if group.count < 1:
            raise ConfigError(p + f"{label}: count must be >= 1, got {group.count}")
        if group.kind == _KIND.KIND_AUTO:
            raise ConfigError(p + f"{label}: kind KIND_AUTO was not resolved (finalize the config first)")
        if group.kind in (_KIND.KIND_CPU, _KIND.KIND_MODEL) and group.gpus:
            raise ConfigError(p + f"{label}: has kind {_KIND.Kind.Name(group.kind)} but specifies one or more GPUs")
        if group.kind == _KIND.KIND_GPU and not group.gpus:
            raise ConfigError(p + f"{label}: has kind KIND_GPU but specifies no GPUs")
        if group.profile and config.platform != "tensorrt_plan":
            raise ConfigError(p + f"{label}: specifies 'profile', which is only supported for TensorRT models")
        for profile in group.profile:
            if not profile.isdigit():
                raise ConfigError(
                    p + f"{label}: invalid profile '{profile}', expected a non-negative integer string"
                )


def _check_model_metrics(config: mc.ModelConfig, p: str) -> None:
    for control in config.model_metrics.metric_control:
        if not control.HasField("metric_identifier"):
            raise ConfigError(p + "model_metrics: metric control must specify 'metric_identifier'")
        if not control.metric_identifier.family:
            raise ConfigError(p + "model_metrics: metric identifier must specify non-empty 'family'")
        if not control.HasField("histogram_options"):
            raise ConfigError(p + "model_metrics: metric control must specify 'histogram_options'")
        if not control.histogram_options.buckets:
            raise ConfigError(p + "model_metrics: histogram options must specify non-empty 'buckets'")


def _check_ensemble(config: mc.ModelConfig, p: str) -> None:
    """Ensemble rules: platform and scheduling agree, no instances, and the steps form a dataflow
    graph in which every tensor is produced once, used, and reachable from the ensemble inputs."""
    if config.platform != ENSEMBLE_PLATFORM:
        raise ConfigError(
            p + f"ensemble_scheduling cannot be set for a model whose platform is not '{ENSEMBLE_PLATFORM}'"
        )
    if not config.HasField("ensemble_scheduling"):
        raise ConfigError(p + f"ensemble_scheduling must be set for platform '{ENSEMBLE_PLATFORM}'")
    if config.instance_group:
        raise ConfigError(p + "instance_group should not be specified for an ensemble")
    if config.HasField("optimization"):
        raise ConfigError(p + "optimization should not be specified for an ensemble")
    if config.model_warmup:
        raise ConfigError(p + "model_warmup can not be specified for an ensemble")
    steps = config.ensemble_scheduling.step
    if not steps:
        raise ConfigError(p + "ensemble_scheduling: must specify 'step'")
    producer: dict[str, int] = {}  # ensemble tensor -> step that writes it
    for i, step in enumerate(steps):
        label = f"ensemble_scheduling step {i}"
        if not step.model_name:
            raise ConfigError(p + f"{label}: must specify 'model_name'")
        if not step.input_map:
            raise ConfigError(p + f"{label}: must specify 'input_map'")
        if not step.output_map:
            raise ConfigError(p + f"{label}: must specify 'output_map'")
        for tensor in step.output_map.values():
            if tensor in producer:
                raise ConfigError(
                    p + f"{label}: ensemble tensor '{tensor}' can appear in an output map only once "
                    f"(also written by step {producer[tensor]})"
                )
            producer[tensor] = i
    inputs = [io.name for io in config.input]
    for name in inputs:
        if name in producer:
            raise ConfigError(p + f"ensemble input '{name}' is also written by step {producer[name]}")
    consumed = {t for step in steps for t in step.input_map.values()}
    for name in inputs:
        if name not in consumed:
            raise ConfigError(p + f"ensemble input '{name}' is not used")
    for i, step in enumerate(steps):
        for model_input, tensor in step.input_map.items():
            if tensor not in producer and tensor not in inputs:
                raise ConfigError(
                    p + f"ensemble_scheduling step {i}: input '{model_input}' of model '{step.model_name}' reads "
                    f"ensemble tensor '{tensor}', which is neither an ensemble input nor any step's output"
                )
    _check_ensemble_cycles(p, steps, producer)
    outputs = {io.name for io in config.output}
    for name in outputs:
        if name not in producer:
            raise ConfigError(p + f"ensemble output '{name}' is not written by any step")
    for tensor, i in producer.items():
        if tensor not in consumed and tensor not in outputs:
            raise ConfigError(p + f"ensemble tensor '{tensor}' (written by step {i}) is unused")


def _check_ensemble_cycles(p: str, steps: Sequence[mc.ModelEnsembling.Step], producer: dict[str, int]) -> None:
    """Depth-first search over step -> step edges (a step depends on the producers of its inputs)."""
    deps = [sorted({producer[t] for t in step.input_map.values() if t in producer}) for step in steps]
    state = [0] * len(steps)  # 0 new, 1 on the current path, 2 done
    for start in range(len(steps)):
        if state[start]:
            continue
        stack = [(start, iter(deps[start]))]
        state[start] = 1
        path = [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state[child] == 1:
                cycle = path[path.index(child):] + [child]
                raise ConfigError(
                    p + "ensemble_scheduling: steps form a cycle: " + " -> ".join(f"step {s}" for s in cycle)
                )
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(deps[child])))
                path.append(child)
