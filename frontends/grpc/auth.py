"""Tenancy at the gRPC door: who is calling (metadata `authorization: Bearer <key>`), or UNAUTHENTICATED.

As on HTTP, only authentication happens here; the core facade decides rights (PERMISSION_DENIED)
and visibility (NOT_FOUND, exactly as for an unknown model) from `tenants.CURRENT`. grpc.aio runs
every call in its own task, so the tenant set here belongs to this call alone (and to the tasks a
streaming call starts, which copy the context).
"""
from __future__ import annotations

from typing import Any, Iterable

import grpc

from tritonpy.core.facade import ServerFacade
from tritonpy.core.tenancy import tenants

__all__ = ["bearer_key", "enter", "retry_after_metadata"]


def bearer_key(metadata: Iterable[Any] | None) -> str | None:
    """The key of an `authorization: Bearer <key>` metadata entry (keys arrive lower-cased)."""
    for item in metadata or ():
        if item[0] != "authorization" or not isinstance(item[1], str):
            continue
        scheme, _, key = item[1].strip().partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            return key.strip()
    return None


async def enter(server: ServerFacade, category: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Set the caller's tenant for the rest of this call, or abort with UNAUTHENTICATED."""
    registry = server.tenants
    if registry is None:
        return
    tenant = registry.authenticate(bearer_key(context.invocation_metadata()), category)
    if tenant is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, tenants.UNAUTHENTICATED_MESSAGE)
    tenants.CURRENT.set(tenant)


def retry_after_metadata(error: Exception) -> tuple[tuple[str, str], ...] | None:
    """Trailing metadata `retry-after: <seconds>` for a tenant over quota, else None."""
    retry_after = getattr(error, "retry_after", None)
    return (("retry-after", str(retry_after)),) if retry_after else None
