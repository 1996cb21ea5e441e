"""One model version: its state, instances and scheduler; request checks against its config; warm-up."""
# The public names load on first use (PEP 562), so importing one module of this room does not pull in
# the others: rooms use each other in both directions, and eager imports here would make cycles.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonpy.core.model.request_checks import validate_request
    from tritonpy.core.model.version import ModelState, ModelVersion
    from tritonpy.core.model.warmup import run_warmup

_EXPORTS = {
    "ModelState": "tritonpy.core.model.version",
    "ModelVersion": "tritonpy.core.model.version",
    "run_warmup": "tritonpy.core.model.warmup",
    "validate_request": "tritonpy.core.model.request_checks",
}
# Spelled out (not derived from _EXPORTS) so that linters and type checkers can read it.
__all__ = ["ModelState", "ModelVersion", "run_warmup", "validate_request"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
