"""Per-tenant quotas: a request-rate token bucket, a cap on requests in flight, and a share of each
model's queue.

Admission happens in the facade before a request reaches a model's queue, so a tenant over its
quota costs the server almost nothing and never takes a queue slot from another tenant. A refusal
is a `QuotaExceeded` (RESOURCE_EXHAUSTED: HTTP 429, gRPC RESOURCE_EXHAUSTED) that carries a
`retry_after` hint in seconds, which the frontends send as `Retry-After`.

The state (buckets, counters) is keyed by tenant name and survives a reload of the tenants file:
only the limits change, so a reload cannot be used to refill a bucket.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.tenancy.tenants import Quota, Tenant

__all__ = ["QuotaExceeded", "TokenBucket", "QuotaBook", "Admission", "REASON_RATE", "REASON_IN_FLIGHT",
           "REASON_QUEUE_SHARE"]

# Metric `reason` labels (nv_inference_request_failure) for the three kinds of refusal.
REASON_RATE = "RATE_LIMITED"
REASON_IN_FLIGHT = "IN_FLIGHT_LIMITED"
REASON_QUEUE_SHARE = "QUEUE_SHARE_LIMITED"


class QuotaExceeded(ServerError):
    """Over quota: retry after `retry_after` seconds (at least 1, as HTTP's Retry-After is whole seconds)."""

    def __init__(self, message: str, *, retry_after: float, reason: str) -> None:
        super().__init__(ErrorCode.RESOURCE_EXHAUSTED, message)
        self.retry_after = max(1, math.ceil(retry_after))
        self.reason = reason


class TokenBucket:
    """`rate` tokens per second up to `burst`; a request takes one token."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def reconfigure(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 1.0


@dataclasses.dataclass(slots=True)
class _TenantState:
    bucket: TokenBucket | None = None
    in_flight: int = 0
    per_model: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class Admission:
    """An admitted request; `release()` exactly once when it is answered (or failed)."""

    book: "QuotaBook"
    tenant: str
    model: str
    done: bool = False

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.book._release(self.tenant, self.model)


class QuotaBook:
    """Quota state for every tenant; single-threaded (the event loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, _TenantState] = {}

    def in_flight(self, tenant: str, model: str = "") -> int:
        state = self._state.get(tenant)
        if state is None:
            return 0
        return state.per_model.get(model, 0) if model else state.in_flight

    def admit(self, tenant: Tenant, model: str, queue_capacity: int) -> Admission | None:
        """Admit one request of `tenant` to `model`, or raise QuotaExceeded. None when unlimited."""
        quota: Quota = tenant.quota
        if not (quota.rate or quota.max_in_flight or quota.queue_share):
            return None
        state = self._state.get(tenant.name)
        if state is None:
            state = self._state[tenant.name] = _TenantState()
        if quota.max_in_flight and state.in_flight >= quota.max_in_flight:
            raise QuotaExceeded(
                f"tenant quota exceeded: {state.in_flight} requests in flight (limit {quota.max_in_flight})",
                retry_after=1.0, reason=REASON_IN_FLIGHT,
            )
        if quota.queue_share:
            allowed = max(1, int(quota.queue_share * queue_capacity))
            held = state.per_model.get(model, 0)
            if held >= allowed:
                raise QuotaExceeded(
                    f"tenant quota exceeded: {held} requests queued for model '{model}' "
                    f"(share limit {allowed} of {queue_capacity})",
                    retry_after=1.0, reason=REASON_QUEUE_SHARE,
                )
        if quota.rate:
            now = self._clock()
            if state.bucket is None:
                state.bucket = TokenBucket(quota.rate, quota.burst, now)
            elif state.bucket.rate != quota.rate or state.bucket.burst != quota.burst:
                state.bucket.reconfigure(quota.rate, quota.burst)
            wait = state.bucket.take(now)
            if wait > 0:
                raise QuotaExceeded(
                    f"tenant quota exceeded: more than {quota.rate:g} requests per second", retry_after=wait,
                    reason=REASON_RATE,
                )
        state.in_flight += 1
        state.per_model[model] = state.per_model.get(model, 0) + 1
        return Admission(self, tenant.name, model)

    def _release(self, tenant: str, model: str) -> None:
        state = self._state.get(tenant)
        if state is None:
            return
        state.in_flight = max(0, state.in_flight - 1)
        left = state.per_model.get(model, 0) - 1
        if left > 0:
            state.per_model[model] = left
        else:
            state.per_model.pop(model, None)
