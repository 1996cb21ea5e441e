"""The model repository: scanning folders, parsing and completing config, the manager that loads,
reloads and unloads models, and poll mode."""
# The public names load on first use (PEP 562), so importing one module of this room does not pull in
# the others: rooms use each other in both directions, and eager imports here would make cycles.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonpy.core.repository.config import ConfigError
    from tritonpy.core.repository.manager import ModelEntry, ModelManager
    from tritonpy.core.repository.poller import RepositoryPoller
    from tritonpy.core.repository.scan import ModelSource, scan_repositories

_EXPORTS = {
    "ConfigError": "tritonpy.core.repository.config",
    "ModelEntry": "tritonpy.core.repository.manager",
    "ModelManager": "tritonpy.core.repository.manager",
    "ModelSource": "tritonpy.core.repository.scan",
    "RepositoryPoller": "tritonpy.core.repository.poller",
    "scan_repositories": "tritonpy.core.repository.scan",
}
# Spelled out (not derived from _EXPORTS) so that linters and type checkers can read it.
__all__ = ["ConfigError", "ModelEntry", "ModelManager", "ModelSource", "RepositoryPoller", "scan_repositories"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
