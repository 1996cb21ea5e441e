"""Who a model acts as when it calls other models (BLS calls, ensemble steps).

Every model has an owner, decided from the tenants file, in this order:

1. a name or glob in the top-level `operator_models` list: the operator (no tenant); its inner calls
   run as the server, as without a tenants file;
2. a name or glob in exactly one tenant's `owns` list: that tenant;
3. otherwise, a name or glob (other than the catch-all `*`) in exactly one tenant's `models` list:
   that tenant. A tenant that sees everything through `*` is an operator-style tenant, not the
   owner of every model;
4. claimed by several tenants (by `owns`, or by `models` without any `owns`): nobody may act for it.
   Its inner calls run as NOBODY, which may infer but sees no model, so each answers "unknown
   model". Running them as the server instead would let any co-owner's code reach every model;
5. claimed by no tenant: the operator (only the operator could have loaded it).

The owner's identity is then the caller (`tenants.CURRENT`) for the inner call: its rights, its
visibility (a model it may not see answers exactly as an unknown one), its quotas (rate,
in-flight, queue share) and its lane in the fair queue.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
from typing import Any, Callable, Iterable, Iterator, Protocol

from tritonpy.core.tenancy import tenants
from tritonpy.core.tenancy.tenants import Tenant, TenantsConfig

log = logging.getLogger("tritonpy.core.tenancy.ownership")

# The identity of a model whose ownership is ambiguous: may infer, sees nothing. Its name cannot be a
# tenant's (tenant names are letters, digits, '_', '.', '-'), so it has its own quota and queue lane.
NOBODY = Tenant(name="(nobody)", models=(), rights=frozenset({"inference"}))

_warned: set[tuple[str, tuple[str, ...]]] = set()


def _matches(patterns: Iterable[str], model: str) -> bool:
    return any(p == model or fnmatch.fnmatchcase(model, p) for p in patterns)


def owner_of(config: TenantsConfig, model: str) -> Tenant | None:
    """The tenant `model` acts as; None = the operator (the server); NOBODY when ambiguous."""
    if _matches(config.operator_models, model):
        return None
    owners = [t for t in config.tenants.values() if _matches(t.owns, model)]
    if not owners:
        owners = [t for t in config.tenants.values() if _matches((p for p in t.models if p != "*"), model)]
    if len(owners) == 1:
        return owners[0]
    if owners:
        names = tuple(sorted(t.name for t in owners))
        if (model, names) not in _warned:
            _warned.add((model, names))
            log.warning("model '%s' is claimed by tenants %s: its BLS calls and ensemble steps see no model "
                        "until one tenant 'owns' it or it is listed in 'operator_models'", model, list(names))
        return NOBODY
    return None


@contextlib.contextmanager
def acting_as(owner: Tenant | None) -> Iterator[None]:
    """Run the body with `owner` as the caller (None = the server)."""
    token = tenants.CURRENT.set(owner)
    try:
        yield
    finally:
        tenants.CURRENT.reset(token)


class _Router(Protocol):
    """The server as an inner call sees it: who a model acts as, and the owner's quota."""

    def owner(self, model: str) -> Tenant | None: ...

    def admit_inner(self, owner: Tenant, mv: Any) -> Any: ...


@dataclasses.dataclass(slots=True)
class _OwnedStep:
    """A composing model run as the ensemble's owner: the owner's quota slot and fair-queue lane.

    The step goes straight to the model (not through the front door): its shared-memory references
    are already resolved to the client's regions, which the ensemble request holds pinned.
    """

    mv: Any
    owner: Tenant
    router: _Router

    @property
    def config(self) -> Any:
        return self.mv.config

    async def infer(self, request: Any) -> Any:
        with acting_as(self.owner):
            admission = self.router.admit_inner(self.owner, self.mv)
            try:
                return await self.mv.infer(request)
            finally:
                if admission is not None:
                    admission.release()


def owned_steps(ensemble: str, resolve: Callable[[str, str], Any], router: Any) -> Callable[[str, str], Any]:
    """The ensemble's step resolver, wrapped so that steps run as the ensemble's owner.

    An operator-owned ensemble (or a server without tenants) keeps the plain path: its steps run
    in the caller's context, as before. For a tenant-owned one, each step checks the owner's
    visibility (hidden = unknown model) and right, and takes the owner's quota.
    """
    if router is None or not hasattr(router, "owner"):
        return resolve

    def step(name: str, version: str) -> Any:
        owner = router.owner(ensemble)
        if owner is None:
            return resolve(name, version)
        with acting_as(owner):
            tenants.require("inference")
            tenants.check_visible(name)  # before touching the model: hidden = unknown
        return _OwnedStep(mv=resolve(name, version), owner=owner, router=router)

    return step


__all__ = ["NOBODY", "acting_as", "owned_steps", "owner_of"]
