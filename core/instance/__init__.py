"""Model instances: one worker process each, the connection to it, supervision and restart, resource
limits, decoupled streams and BLS sessions."""
# The public names load on first use (PEP 562), so importing one module of this room does not pull in
# the others: rooms use each other in both directions, and eager imports here would make cycles.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonpy.core.instance.pool import WorkerPool
    from tritonpy.core.instance.spec import InstanceSpec, InstanceState
    from tritonpy.core.instance.worker_instance import WorkerInstance

_EXPORTS = {
    "InstanceSpec": "tritonpy.core.instance.spec",
    "InstanceState": "tritonpy.core.instance.spec",
    "WorkerInstance": "tritonpy.core.instance.worker_instance",
    "WorkerPool": "tritonpy.core.instance.pool",
}
# Spelled out (not derived from _EXPORTS) so that linters and type checkers can read it.
__all__ = ["InstanceSpec", "InstanceState", "WorkerInstance", "WorkerPool"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
