"""Tenancy at the HTTP door: who is calling (`Authorization: Bearer <key>`), or 401.

The frontend only authenticates; rights (403) and model visibility (404) are decided by the core
facade from the tenant this module puts in `tenants.CURRENT`, so HTTP and gRPC cannot disagree.
Without a tenants file nothing happens here and the server is as open as Triton's.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

from tritonpy.core.facade import ServerFacade
from tritonpy.core.tenancy import tenants
from tritonpy.frontends.http.errors import HttpError

__all__ = ["bearer_key", "tenant_scope", "CHALLENGE"]

# RFC 6750: a 401 names the scheme the client should use.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tritonpy"'}


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (scheme case-insensitive), else None."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, key = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


@contextlib.contextmanager
def tenant_scope(server: ServerFacade, category: str, headers: Mapping[str, str]) -> Iterator[None]:
    """Run the request as its tenant; raises HttpError(401) for a missing or unknown key."""
    registry = server.tenants
    if registry is None:
        yield
        return
    tenant = registry.authenticate(bearer_key(headers), category)
    if tenant is None:
        raise HttpError(401, tenants.UNAUTHENTICATED_MESSAGE, headers=dict(CHALLENGE))
    token = tenants.CURRENT.set(tenant)
    try:
        yield
    finally:
        tenants.CURRENT.reset(token)
