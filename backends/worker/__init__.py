"""The worker process machinery, apart from the backends it hosts.

`process` is the entry point (`python -m tritonpy.backends.worker`), `channel` the I/O socket back to
the core (decoupled responses, cancellation, BLS), `tensor_io` reads inputs from and writes outputs to
shared memory, `heartbeat` tells the core the worker is alive, `state` keeps implicit sequence state,
and `logfmt` formats the worker's log lines for the core to forward.
"""
# The names load on first use (PEP 562): a backend importing `channel` must not pull in the whole
# worker entry point.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonpy.backends.worker.channel import WorkerChannel
    from tritonpy.backends.worker.process import Worker, main

_EXPORTS = {
    "Worker": "tritonpy.backends.worker.process",
    "WorkerChannel": "tritonpy.backends.worker.channel",
    "main": "tritonpy.backends.worker.process",
}
__all__ = ["Worker", "WorkerChannel", "main"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
