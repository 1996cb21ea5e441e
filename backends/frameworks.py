"""Importing an optional ML framework inside a worker, with a load error that says what to install.

The frameworks (torch, openvino, tensorflow, tensorrt) are optional extras of tritonpy. A backend
imports its framework only here, inside the worker that serves such a model, so the core and
other workers never pay for it. When the package is missing the model becomes UNAVAILABLE with
a reason naming the extra, e.g. `pip install 'tritonpy[torch]'`.
"""
from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

from tritonpy.backends.base import BackendError
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.frameworks")

# top-level module -> (backend name, distribution on PyPI, extra that installs it)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "torch": ("pytorch", "torch", "torch"),
    "openvino": ("openvino", "openvino", "openvino"),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow"),
    "tensorrt": ("tensorrt", "tensorrt", "gpu"),
    "cuda": ("tensorrt", "cuda-python", "gpu"),
}


def missing_message(module: str, detail: str = "") -> str:
    """The UNAVAILABLE reason for a framework that cannot be imported."""
    backend, package, extra = EXTRAS.get(module, (module, module, module))
    text = (
        f"the {backend} backend needs the Python package '{package}', which is not installed in the "
        f"server's environment; install it with: pip install 'tritonpy[{extra}]'"
    )
    return f"{text} ({detail})" if detail else text


def require(module: str) -> ModuleType:
    """Import `module` or raise an UNAVAILABLE BackendError naming the extra to install.

    Only a missing top-level package gets the install hint; an import that fails inside the
    package (a broken install, a missing shared library) keeps its own message, because
    reinstalling the extra is not necessarily the cure.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise BackendError(f"importing '{module}' failed: {exc}", ErrorCode.UNAVAILABLE) from exc
        raise BackendError(missing_message(top), ErrorCode.UNAVAILABLE) from exc
    except ImportError as exc:
        raise BackendError(f"importing '{module}' failed: {exc}", ErrorCode.UNAVAILABLE) from exc


def cpu_threads(config_value: str, total_instances: int, key: str) -> int:
    """Threads for one instance: the config's value, else the machine's CPUs shared by all instances."""
    text = config_value.strip()
    if text:
        try:
            value = int(text)
        except ValueError as exc:
            raise BackendError(f"parameter {key} must be an integer, got '{text}'", ErrorCode.INVALID_ARG) from exc
        if value > 0:
            return value
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, total_instances))
