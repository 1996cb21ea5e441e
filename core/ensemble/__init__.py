"""Ensembles: load-time checks of the step graph, dependencies between models, the dataflow executor."""
# The public names load on first use (PEP 562), so importing one module of this room does not pull in
# the others: rooms use each other in both directions, and eager imports here would make cycles.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonpy.core.ensemble.check import validate_ensemble
    from tritonpy.core.ensemble.deps import prepare_ensemble
    from tritonpy.core.ensemble.executor import EnsembleExecutor

_EXPORTS = {
    "EnsembleExecutor": "tritonpy.core.ensemble.executor",
    "prepare_ensemble": "tritonpy.core.ensemble.deps",
    "validate_ensemble": "tritonpy.core.ensemble.check",
}
# Spelled out (not derived from _EXPORTS) so that linters and type checkers can read it.
__all__ = ["EnsembleExecutor", "prepare_ensemble", "validate_ensemble"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
