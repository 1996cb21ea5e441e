"""Admission of one inference request, as one async context manager: the tenant's shared-memory
namespace, its quota, and the client shared-memory regions the request reads or writes.

    async with admitted(request, mv, tenant, shm=..., quotas=..., queue_capacity=...):
        return await mv.infer(request)

On entry every shared-memory reference is resolved up front, so a bad one fails before the request
queues, and the regions are pinned (an unregister waits for them); on exit they are unpinned and
the quota slot is given back, however the request ended. The caller has already checked the
tenant's right and the model's visibility (InferenceServer.resolve); nothing here looks them up.
"""
from __future__ import annotations

import contextlib
from typing import AsyncIterator

from tritonpy.core.errors import ServerError, invalid
from tritonpy.core.model.version import ModelVersion
from tritonpy.core.shm_registry import CudaRegion, ShmRegistry, SystemRegion
from tritonpy.core.tenancy import tenants
from tritonpy.core.tenancy.quota import Admission, QuotaBook, QuotaExceeded
from tritonpy.core.types import InferRequest
from tritonpy.proto import dtypes

Region = SystemRegion | CudaRegion


@contextlib.asynccontextmanager
async def admitted(
    request: InferRequest, mv: ModelVersion, tenant: tenants.Tenant | None, *,
    shm: ShmRegistry, quotas: QuotaBook, queue_capacity: int,
) -> AsyncIterator[None]:
    """Hold the request's quota slot and shared-memory regions while the body runs.

    `queue_capacity` is the tenants file's default, used when the model's config sets no queue size.
    """
    admission = _admit_tenant(request, mv, tenant, quotas, queue_capacity) if tenant is not None else None
    try:
        regions = resolve_regions(shm, request)
        shm.acquire(regions)
        try:
            yield
        finally:
            shm.release(regions)
    except ServerError as exc:
        if tenant is not None:  # region names in errors as the client wrote them
            exc.message = exc.message.replace(f"'{tenant.name}/", "'")
            exc.args = (exc.message,)
        raise
    finally:
        if admission is not None:
            admission.release()


def _admit_tenant(
    request: InferRequest, mv: ModelVersion, tenant: tenants.Tenant, quotas: QuotaBook, default_capacity: int
) -> Admission | None:
    """A tenant's request: its shared-memory names go to the tenant's namespace, then the quota.
    Returns the admission to release when the request is answered (None without limits)."""
    for tensor in (*request.inputs, *(request.outputs or ())):
        if tensor.shm is not None:
            tensor.shm.region = tenants.shm_name(tensor.shm.region)
    return admit_quota(mv, tenant, quotas, default_capacity)


def admit_quota(mv: ModelVersion, tenant: tenants.Tenant, quotas: QuotaBook, default_capacity: int) -> Admission | None:
    """The quota part alone: also what an ensemble step run as its owner takes (core/tenancy/ownership.py)."""
    config = mv.config
    capacity = 0
    if config.HasField("dynamic_batching"):
        capacity = int(config.dynamic_batching.default_queue_policy.max_queue_size)
    try:
        return quotas.admit(tenant, mv.name, capacity or default_capacity)
    except QuotaExceeded as exc:
        mv.stats.record_failure(0, exc.reason)
        raise


def resolve_regions(shm: ShmRegistry, request: InferRequest) -> list[Region]:
    """Resolve every shared-memory reference up front so bad ones fail before queueing."""
    regions: list[Region] = []
    for tensor in request.inputs:
        if tensor.shm is not None:
            _, region = shm.resolve(tensor.shm.region, tensor.shm.offset, tensor.shm.byte_size, tensor=tensor.name)
            if tensor.datatype != "BYTES":
                need = dtypes.byte_size(tensor.datatype, tensor.shape)
                if need is not None and need != tensor.shm.byte_size:
                    raise invalid(
                        f"input '{tensor.name}': shared memory byte_size {tensor.shm.byte_size} does not match "
                        f"the {need} bytes of a {tensor.datatype} tensor of shape {list(tensor.shape)}"
                    )
            regions.append(region)
    for out in request.outputs or ():
        if out.shm is not None:
            if out.classification:
                raise invalid(f"output '{out.name}': classification cannot be combined with shared memory")
            _, region = shm.resolve(out.shm.region, out.shm.offset, out.shm.byte_size, tensor=out.name)
            regions.append(region)
    return regions


__all__ = ["admit_quota", "admitted", "resolve_regions"]
