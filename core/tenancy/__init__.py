"""Tenants: keys, permissions and quotas."""
# The public names load on first use (PEP 562), so importing one module of this room does not pull in
# the others: rooms use each other in both directions, and eager imports here would make cycles.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonpy.core.tenancy.quota import QuotaBook, QuotaExceeded
    from tritonpy.core.tenancy.tenants import Tenant, TenantRegistry

_EXPORTS = {
    "QuotaBook": "tritonpy.core.tenancy.quota",
    "QuotaExceeded": "tritonpy.core.tenancy.quota",
    "Tenant": "tritonpy.core.tenancy.tenants",
    "TenantRegistry": "tritonpy.core.tenancy.tenants",
}
# Spelled out (not derived from _EXPORTS) so that linters and type checkers can read it.
__all__ = ["QuotaBook", "QuotaExceeded", "Tenant", "TenantRegistry"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
