"""What one tenant may change of what every tenant shares: the server-wide settings.

Reading is already per tenant everywhere (statistics, the repository index, a metrics scrape,
per-model trace settings, shared-memory status: the caller's models and regions only). Writing
server-wide state would reach other tenants, so it is the operator's:

* the operator is the server itself (no tenants file, or an internal call) or a tenant whose
  `models` hold the catch-all `*`: it sees every model, so nothing it changes is hidden from it;
* any other tenant may change the trace settings of its own models only, and not `trace_file`
  (a path the server would write, as the server, possibly into a file another tenant's traces go
  to); the global trace settings and the log settings answer PERMISSION_DENIED (403).
"""
from __future__ import annotations

from typing import Any, Mapping

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.tenancy import tenants
from tritonpy.core.tenancy.tenants import Tenant


def is_operator(tenant: Tenant | None) -> bool:
    return tenant is None or "*" in tenant.models


def require_operator(what: str) -> None:
    """Raise PERMISSION_DENIED unless the caller is the operator."""
    tenant = tenants.CURRENT.get()
    if not is_operator(tenant):
        assert tenant is not None
        raise ServerError(ErrorCode.PERMISSION_DENIED,
                          f"tenant '{tenant.name}' may not change {what}: they apply to every tenant")


def check_trace_update(model: str, settings: Mapping[str, Any]) -> None:
    """A tenant's trace settings update: its own models only (checked by the caller), no file path."""
    if not model:
        require_operator("the global trace settings")
    elif "trace_file" in settings:
        require_operator("trace_file")


__all__ = ["check_trace_update", "is_operator", "require_operator"]
