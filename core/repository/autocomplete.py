"""Filling in a model configuration: backend detection, the backend's own completion, core defaults.

Triton completes a configuration in three steps, and so do we:

1. `resolve_backend` (Triton core's server-side autofill, always on): infer `backend`, `platform` and
   `default_model_filename` from each other and from the files in the first version directory.
2. `apply_backend_completion`: the backend (in the worker) reads the model and returns a completed
   configuration as JSON (inputs, outputs, max_batch_size, dynamic batching...); we merge it.
3. `finalize_config` (Triton's NormalizeModelConfig + NormalizeInstanceGroup): version policy,
   pinned-memory defaults, preferred batch sizes, sequence idle time, instance groups.

`ConfigError` lives here, the lowest layer of config handling, so that `config.py` (parsing and
validation) and `repository.py` can both raise it without importing each other in a cycle; it is
re-exported by `tritonpy.core.repository.config`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from google.protobuf import json_format

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.proto import model_config_pb2 as mc

if TYPE_CHECKING:  # repository.py imports this module, so only for type checkers
    from tritonpy.core.repository.scan import ModelSource

log = logging.getLogger("tritonpy.core.repository.autocomplete")

__all__ = [
    "ConfigError",
    "ENSEMBLE_PLATFORM",
    "DEFAULT_MODEL_FILENAMES",
    "resolve_backend",
    "backend_for",
    "apply_backend_completion",
    "finalize_config",
    "config_from_json",
    "SEQUENCE_IDLE_DEFAULT_US",
]

ENSEMBLE_PLATFORM = "ensemble"

# Triton's constants.h: platform and file names per backend.
TENSORFLOW, TENSORRT, ONNXRUNTIME, OPENVINO, PYTORCH, PYTHON = (
    "tensorflow", "tensorrt", "onnxruntime", "openvino", "pytorch", "python",
)
TF_SAVEDMODEL_PLATFORM, TF_GRAPHDEF_PLATFORM = "tensorflow_savedmodel", "tensorflow_graphdef"
TF_SAVEDMODEL_FILE, TF_GRAPHDEF_FILE = "model.savedmodel", "model.graphdef"
TRT_PLATFORM, TRT_FILE = "tensorrt_plan", "model.plan"
ORT_PLATFORM, ORT_FILE = "onnxruntime_onnx", "model.onnx"
OPENVINO_FILE = "model.xml"
LIBTORCH_PLATFORM, LIBTORCH_PLATFORM_ALT, LIBTORCH_FILE = "pytorch_libtorch", "libtorch", "model.pt"
AOTI_PLATFORM, AOTI_FILE = "torch_aoti", "model.pt2"
PYTHON_FILE = "model.py"

DEFAULT_MODEL_FILENAMES: dict[str, str] = {
    TF_SAVEDMODEL_PLATFORM: TF_SAVEDMODEL_FILE,
    TF_GRAPHDEF_PLATFORM: TF_GRAPHDEF_FILE,
    TRT_PLATFORM: TRT_FILE,
    ORT_PLATFORM: ORT_FILE,
    LIBTORCH_PLATFORM: LIBTORCH_FILE,
    LIBTORCH_PLATFORM_ALT: LIBTORCH_FILE,
    AOTI_PLATFORM: AOTI_FILE,
    # backends without a platform
    OPENVINO: OPENVINO_FILE,
    PYTHON: PYTHON_FILE,
}

# Which backend a platform belongs to (used both ways: detection and the pair check in validation).
PLATFORM_BACKEND: dict[str, str] = {
    TF_SAVEDMODEL_PLATFORM: TENSORFLOW,
    TF_GRAPHDEF_PLATFORM: TENSORFLOW,
    TRT_PLATFORM: TENSORRT,
    ORT_PLATFORM: ONNXRUNTIME,
    LIBTORCH_PLATFORM: PYTORCH,
    LIBTORCH_PLATFORM_ALT: PYTORCH,
    AOTI_PLATFORM: PYTORCH,
}

# Backends whose Triton implementation turns on the dynamic batcher while auto-completing a model
# with max_batch_size > 1 and no scheduler (ORT, TensorRT, OpenVINO and TensorFlow backends do;
# PyTorch cannot auto-complete; Python only when its auto_complete_config asks for it).
_AUTO_DYNAMIC_BATCHING_BACKENDS = frozenset({ONNXRUNTIME, TENSORRT, OPENVINO, TENSORFLOW})
# Backends that opt into two CPU instances by default (SetDefaultInstanceCount).
_TWO_CPU_INSTANCE_BACKENDS = frozenset({TENSORFLOW, ONNXRUNTIME})
SEQUENCE_IDLE_DEFAULT_US = 1_000_000


class ConfigError(ServerError):
    """An invalid or unreadable model configuration (INVALID_ARG, HTTP 400).

    Messages start with `model '<name>':` and name the offending field.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_ARG, message)


def _entries(version_dir: Path | None) -> dict[str, bool]:
    """Names in the version directory mapped to whether each is a directory."""
    if version_dir is None:
        return {}
    try:
        return {p.name: p.is_dir() for p in version_dir.iterdir()}
    except OSError:
        return {}


def resolve_backend(config: mc.ModelConfig, source: "ModelSource | None" = None) -> mc.ModelConfig:
    """Fill `backend`, `platform` and `default_model_filename` the way Triton core does.

    `source` is a `ModelSource` (its lowest version directory is inspected) or None. The config is
    changed in place and returned. The name defaults to the source's directory name.
    """
    version_dir: Path | None = None
    if source is not None:
        if not config.name:
            config.name = source.name
        if source.version_dirs:
            version_dir = source.version_dirs[min(source.version_dirs)]
    files = _entries(version_dir)

    # Backend from platform (covers ensemble: platform only, no backend).
    if not config.backend and config.platform in PLATFORM_BACKEND:
        config.backend = PLATFORM_BACKEND[config.platform]

    # TensorFlow needs a platform; find it from the file name or the files on disk.
    if not config.platform and config.backend in ("", TENSORFLOW):
        if config.default_model_filename == TF_SAVEDMODEL_FILE:
            config.platform = TF_SAVEDMODEL_PLATFORM
        elif config.default_model_filename == TF_GRAPHDEF_FILE:
            config.platform = TF_GRAPHDEF_PLATFORM
        elif not config.default_model_filename:
            if files.get(TF_SAVEDMODEL_FILE) is True:
                config.platform = TF_SAVEDMODEL_PLATFORM
            elif files.get(TF_GRAPHDEF_FILE) is False:
                config.platform = TF_GRAPHDEF_PLATFORM
        if config.platform:
            config.backend = TENSORFLOW

    if not config.backend and not config.platform:
        config.backend = _backend_from_files(config.default_model_filename, files)

    if config.backend and not config.platform:
        if config.backend == ONNXRUNTIME:
            config.platform = ORT_PLATFORM
        elif config.backend == TENSORRT:
            config.platform = TRT_PLATFORM
        elif config.backend == PYTORCH:
            # AOTI must be asked for explicitly (by platform, file name or a model.pt2 on disk).
            if config.default_model_filename == AOTI_FILE or (
                not config.default_model_filename and files.get(AOTI_FILE) is False
                and LIBTORCH_FILE not in files
            ):
                config.platform = AOTI_PLATFORM
            else:
                config.platform = LIBTORCH_PLATFORM

    if not config.default_model_filename:
        key = config.platform or config.backend
        if key in DEFAULT_MODEL_FILENAMES:
            config.default_model_filename = DEFAULT_MODEL_FILENAMES[key]
    return config


def _backend_from_files(default_model_filename: str, files: dict[str, bool]) -> str:
    """The backend implied by `default_model_filename`, else by the model file in the version dir."""
    by_name = {
        TRT_FILE: TENSORRT, ORT_FILE: ONNXRUNTIME, OPENVINO_FILE: OPENVINO,
        LIBTORCH_FILE: PYTORCH, AOTI_FILE: PYTORCH, PYTHON_FILE: PYTHON,
    }
    if default_model_filename:
        return by_name.get(default_model_filename, "")
    # Same precedence as Triton: TensorRT, ONNX (file or directory), OpenVINO, PyTorch, Python.
    if files.get(TRT_FILE) is False:
        return TENSORRT
    if ORT_FILE in files:
        return ONNXRUNTIME
    if OPENVINO_FILE in files:
        return OPENVINO
    if files.get(LIBTORCH_FILE) is False or files.get(AOTI_FILE) is False:
        return PYTORCH
    if PYTHON_FILE in files:
        return PYTHON
    return ""


def backend_for(config: mc.ModelConfig) -> str:
    """The backend that serves this config: `backend`, else the one implied by `platform`.

    Ensembles answer "ensemble" (they run in the core, not in a worker); "" when unknown.
    """
    if config.backend:
        return config.backend
    if config.platform == ENSEMBLE_PLATFORM:
        return ENSEMBLE_PLATFORM
    return PLATFORM_BACKEND.get(config.platform, "")


def config_from_json(text: str | bytes, *, model: str = "") -> mc.ModelConfig:
    """Parse a ModelConfig from JSON (a load override or a backend's completion).

    Accepts protobuf field names or camelCase, 64-bit integers as numbers or strings, enums by name
    or number. Any error becomes a ConfigError.
    """
    prefix = f"model '{model}': " if model else ""
    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise ConfigError(f"{prefix}failed to parse model configuration JSON: {exc}") from None
    return config


def apply_backend_completion(config: mc.ModelConfig, completed_json: str | bytes) -> mc.ModelConfig:
    """Merge the configuration a backend completed (JSON) into `config` and return it.

    A backend may return the whole configuration or only what it filled in: every top-level field
    present in the JSON replaces that field (lists and maps replace, they do not append). The name
    cannot be changed; an empty document changes nothing.
    """
    if isinstance(completed_json, bytes):
        completed_json = completed_json.decode("utf-8", "replace")
    if not completed_json.strip():
        return config
    try:
        document = json.loads(completed_json)
    except ValueError as exc:
        raise ConfigError(f"model '{config.name}': backend returned invalid configuration JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"model '{config.name}': backend returned a configuration that is not a JSON object")
    completed = config_from_json(completed_json, model=config.name)
    if completed.name and config.name and completed.name != config.name:
        raise ConfigError(
            f"model '{config.name}': the backend cannot change the model name (it returned '{completed.name}')"
        )
    fields = mc.ModelConfig.DESCRIPTOR.fields_by_name
    by_json_name = {f.json_name: f.name for f in mc.ModelConfig.DESCRIPTOR.fields}
    for key in document:
        json_key = str(key)  # JSON object keys are strings; this tells the type checker
        name = json_key if json_key in fields else by_json_name.get(json_key, json_key)
        if name == "name":
            continue
        field = fields[name]
        if field.is_repeated:
            config.ClearField(name)
            getattr(config, name).MergeFrom(getattr(completed, name))
        elif field.message_type is not None:
            if completed.HasField(name):
                getattr(config, name).CopyFrom(getattr(completed, name))
            else:
                config.ClearField(name)
        else:
            setattr(config, name, getattr(completed, name))
    return config


def finalize_config(
    config: mc.ModelConfig,
    *,
    default_max_batch_size: int = 4,
    autocomplete: bool,
    available_gpus: Sequence[int] = (),
) -> mc.ModelConfig:
    """Apply Triton core's defaults in place and return the config. Idempotent.

    - version_policy: latest{num_versions: 1} when unset.
    - With `autocomplete`, backends that do so in Triton (onnxruntime, tensorrt, openvino,
      tensorflow) get `dynamic_batching {}` when max_batch_size > 1 and no scheduler is set.
    - dynamic_batching / sequence_batching.oldest: preferred_batch_size defaults to [max_batch_size];
      sequence_batching: max_sequence_idle_microseconds defaults to 1 s.
    - Not for ensembles: input/output pinned memory enabled when unset, and instance groups: one
      group named after the model when there is none; unnamed groups become `<model>_<i>`;
      KIND_AUTO becomes KIND_GPU only when every listed GPU is in `available_gpus` (CPU here by
      default); count < 1 becomes 2 for CPU onnxruntime/tensorflow, else 1; KIND_GPU without `gpus`
      gets every available GPU, and with none available it is an error.

    `default_max_batch_size` (`--backend-config=default-max-batch-size`) is what the *backend* uses
    when it completes a batch-capable model (Triton core itself never applies it); it is accepted
    here so callers hand one set of options around, and must not be negative.
    """
    if default_max_batch_size < 0:
        raise ConfigError(f"model '{config.name}': default-max-batch-size must be >= 0, got {default_max_batch_size}")
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1

    scheduling = config.WhichOneof("scheduling_choice")
    if (
        autocomplete
        and scheduling is None
        and config.max_batch_size > 1
        and backend_for(config) in _AUTO_DYNAMIC_BATCHING_BACKENDS
    ):
        config.dynamic_batching.SetInParent()
        scheduling = "dynamic_batching"

    if scheduling == "dynamic_batching":
        if not config.dynamic_batching.preferred_batch_size and config.max_batch_size > 0:
            config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)
    elif scheduling == "sequence_batching":
        seq = config.sequence_batching
        if seq.max_sequence_idle_microseconds == 0:
            seq.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_US
        if seq.HasField("oldest") and not seq.oldest.preferred_batch_size and config.max_batch_size > 0:
            seq.oldest.preferred_batch_size.append(config.max_batch_size)

    if scheduling == "ensemble_scheduling" or config.platform == ENSEMBLE_PLATFORM:
        return config

    opt = config.optimization
    if not opt.HasField("input_pinned_memory"):
        opt.input_pinned_memory.enable = True
    if not opt.HasField("output_pinned_memory"):
        opt.output_pinned_memory.enable = True

    _normalize_instance_groups(config, tuple(available_gpus))
    return config


def _normalize_instance_groups(config: mc.ModelConfig, gpus: tuple[int, ...]) -> None:
    kinds = mc.ModelInstanceGroup
    if not config.instance_group:
        config.instance_group.add().name = config.name
    backend = backend_for(config)
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == kinds.KIND_AUTO:
            usable = bool(gpus) and all(g in gpus for g in group.gpus)
            group.kind = kinds.KIND_GPU if usable else kinds.KIND_CPU
            if group.kind == kinds.KIND_CPU and group.gpus:
                log.warning(
                    "model '%s': instance group '%s' lists GPUs %s that are not available; using KIND_CPU",
                    config.name, group.name, list(group.gpus),
                )
                del group.gpus[:]
        if group.count < 1:
            group.count = 2 if (group.kind == kinds.KIND_CPU and backend in _TWO_CPU_INSTANCE_BACKENDS) else 1
        if group.kind == kinds.KIND_GPU and not group.gpus:
            if not gpus:
                raise ConfigError(
                    f"model '{config.name}': instance group '{group.name}' has kind KIND_GPU "
                    f"but no GPUs are available"
                )
            group.gpus.extend(sorted(gpus))
