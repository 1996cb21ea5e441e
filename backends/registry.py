"""Finding the backend class for a backend name.

Search order (first match wins), mirroring Triton's search for `libtriton_<name>.so` (version
directory, model directory, then the server's backends):

1. a file shipped with the model: `<model_dir>/<version>/<name>_backend.py`, then
   `<model_dir>/<name>_backend.py`;
2. the built-in backends (`python`, `onnxruntime`, `identity`, and the framework backends
   `pytorch`, `openvino`, `tensorflow`, `tensorrt`, whose frameworks are optional extras);
3. installed packages that declare an entry point in the group `tritonpy.backends`
   (`my_backend = "my_pkg.module:MyBackend"`).

Built-ins come before entry points so that an installed package cannot silently replace them;
a model that ships its own file has asked for it explicitly. Backend modules are imported only
here, when a worker needs them, so heavy frameworks load only in the workers that use them.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
from pathlib import Path
from types import ModuleType

from tritonpy.backends.base import Backend, BackendError
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.registry")

ENTRY_POINT_GROUP = "tritonpy.backends"
BUILTINS: dict[str, str] = {
    "python": "tritonpy.backends.python.backend:PythonBackend",
    "onnxruntime": "tritonpy.backends.ort_backend:OnnxRuntimeBackend",
    "identity": "tritonpy.backends.identity:IdentityBackend",
    # Framework backends: their module imports the framework only when constructed (in the worker).
    "pytorch": "tritonpy.backends.pytorch_backend:PyTorchBackend",
    "openvino": "tritonpy.backends.openvino_backend:OpenVINOBackend",
    "tensorflow": "tritonpy.backends.tensorflow_backend:TensorFlowBackend",
    "tensorrt": "tritonpy.backends.tensorrt_backend:TensorRTBackend",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class BackendNotFound(BackendError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.NOT_FOUND)


def shipped_backend_files(name: str, model_dir: Path, version_dir: Path) -> list[Path]:
    """Where a model-shipped backend for `name` may live, in search order."""
    filename = f"{name}_backend.py"
    return [version_dir / filename, model_dir / filename]


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    try:
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken distribution must not take the worker down
        log.exception("cannot read entry points of group %s", ENTRY_POINT_GROUP)
        return {}
    return {ep.name: ep for ep in found}


def known_backends() -> list[str]:
    return sorted(set(BUILTINS) | set(_entry_points()))


def _backend_class_in(module: ModuleType, origin: str) -> type[Backend]:
    """`module.BACKEND`, or else the one Backend subclass the module defines itself."""
    explicit = getattr(module, "BACKEND", None)
    if explicit is not None:
        if isinstance(explicit, type) and issubclass(explicit, Backend):
            return explicit
        raise BackendError(f"{origin}: BACKEND must be a subclass of tritonpy.backends.base.Backend")
    candidates = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Backend)
        and value is not Backend
        and value.__module__ == module.__name__
    ]
    if len(candidates) != 1:
        names = ", ".join(sorted(c.__name__ for c in candidates)) or "none"
        raise BackendError(
            f"{origin}: expected exactly one subclass of tritonpy.backends.base.Backend "
            f"(or a module-level BACKEND naming one), found {names}"
        )
    return candidates[0]


def _load_file(name: str, path: Path) -> type[Backend]:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
    module_name = f"tritonpy_model_backend_{safe}_{abs(hash(str(path.resolve()))):x}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BackendError(f"cannot import backend file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return _backend_class_in(module, str(path))


def _load_ref(ref: str) -> type[Backend]:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr) if attr else module
    if isinstance(obj, ModuleType):
        return _backend_class_in(obj, ref)
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise BackendError(f"'{ref}' is not a subclass of tritonpy.backends.base.Backend")
    return obj


def find_backend(name: str, *, model_dir: Path, version_dir: Path) -> type[Backend]:
    """The Backend class for `name`; BackendNotFound (naming the known ones) when there is none.

    Import errors inside a backend module propagate unchanged, so the load failure shows the
    real cause.
    """
    if not name:
        raise BackendNotFound(
            f"no backend named in the model configuration; known backends: {', '.join(known_backends())}"
        )
    if not _NAME_RE.match(name):
        raise BackendNotFound(f"invalid backend name '{name}'")
    for path in shipped_backend_files(name, model_dir, version_dir):
        if path.is_file():
            log.info("using backend '%s' shipped with the model: %s", name, path)
            return _load_file(name, path)
    if name in BUILTINS:
        return _load_ref(BUILTINS[name])
    entry = _entry_points().get(name)
    if entry is not None:
        obj = entry.load()
        if isinstance(obj, ModuleType):
            return _backend_class_in(obj, entry.value)
        if not (isinstance(obj, type) and issubclass(obj, Backend)):
            raise BackendError(f"entry point '{name}' ({entry.value}) is not a tritonpy Backend subclass")
        return obj
    raise BackendNotFound(
        f"unknown backend '{name}'; known backends: {', '.join(known_backends())} "
        f"(or ship one with the model as {name}_backend.py in the model or version directory)"
    )
