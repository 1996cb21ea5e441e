"""Tenants: who is calling, what they may do, and which models they may see.

A tenants file (`--tenants-config`, YAML for `.yaml`/`.yml`, JSON otherwise) maps API keys to tenants:

    {"anonymous": ["health"],
     "tenants": {
        "team-a": {"keys": ["<key>"], "key_sha256": ["<hex digest>"],
                   "models": ["resnet*", "bert"], "rights": ["inference", "statistics"],
                   "weight": 2, "quota": {"rate": 50, "burst": 10, "max_in_flight": 8, "queue_share": 0.5}}}}

Why the shape is what it is:

* Keys are looked up by hashing the presented key (SHA-256) and comparing that digest with every
  known digest through `hmac.compare_digest`, without stopping at the first match, so the time
  taken does not depend on how much of a key was right. Keys themselves are never kept after the
  file is parsed (only digests) and never logged.
* The frontends only authenticate (401) and set the caller in `CURRENT`, a context variable: each
  HTTP request and each gRPC call runs in its own task, so the value cannot leak between callers,
  and the facade decides rights (403) and visibility (404) once for both protocols.
* `CURRENT` unset (None) means a trusted internal caller, or a server without a tenants file:
  exactly today's open behaviour.
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import re
from typing import Any, Iterable

from tritonpy.core.errors import ErrorCode, ServerError

log = logging.getLogger("tritonpy.core.tenancy.tenants")

# Rights a tenant may be given. Health, server metadata and the (filtered) repository index only
# need a valid key; model metadata/config/ready need the model to be visible.
RIGHTS = frozenset({"inference", "model-control", "shared-memory", "statistics", "logging", "trace"})
# Categories a request may use without any key when listed under "anonymous".
ANONYMOUS_CATEGORIES = frozenset({"health", "metadata", "metrics"})
DEFAULT_ANONYMOUS = ("health",)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
RELOAD_POLL_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Quota:
    """Per-tenant limits; 0 means unlimited."""

    rate: float = 0.0  # requests per second (token bucket refill)
    burst: float = 0.0  # bucket size; defaults to max(1, rate)
    max_in_flight: int = 0
    queue_share: float = 0.0  # fraction (0, 1] of each model's queue capacity


@dataclasses.dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    models: tuple[str, ...] = ()
    rights: frozenset[str] = frozenset()
    weight: float = 1.0
    quota: Quota = Quota()
    owns: tuple[str, ...] = ()  # models this tenant owns (core/tenancy/ownership.py); it sees them too

    def sees(self, model: str) -> bool:
        """Whether `model` exists for this tenant (names or shell-style globs)."""
        for pattern in (*self.models, *self.owns):
            if pattern == model or fnmatch.fnmatchcase(model, pattern):
                return True
        return False

    def may(self, right: str) -> bool:
        return right in self.rights


# The anonymous caller: sees no model and has no right; only reaches the categories that the file
# opens to everyone.
ANONYMOUS = Tenant(name="", models=(), rights=frozenset())

# The caller of the current request; None = open server or trusted internal call.
CURRENT: contextvars.ContextVar[Tenant | None] = contextvars.ContextVar("tritonpy_tenant", default=None)


def current() -> Tenant | None:
    return CURRENT.get()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclasses.dataclass(frozen=True, slots=True)
class TenantsConfig:
    """A parsed tenants file: digests to tenants, plus the categories open without a key."""

    tenants: dict[str, Tenant]
    digests: tuple[tuple[bytes, str], ...]  # (sha256(key), tenant name)
    anonymous: frozenset[str]
    queue_capacity: int = 64  # the queue size a `queue_share` applies to when a model sets none
    operator_models: tuple[str, ...] = ()  # models owned by no tenant (core/tenancy/ownership.py)

    def lookup(self, key: str) -> Tenant | None:
        """The tenant owning `key`, in time independent of which digest (if any) matches."""
        presented = _digest(key)
        found = ""
        for digest, name in self.digests:
            if hmac.compare_digest(digest, presented):
                found = name
        return self.tenants.get(found) if found else None


def _as_list(value: object, what: str) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _quota(raw: Any, tenant: str) -> Quota:
    if raw is None:
        return Quota()
    if not isinstance(raw, dict):
        raise ValueError(f"tenant '{tenant}': quota must be a mapping")
    unknown = set(raw) - {"rate", "burst", "max_in_flight", "queue_share"}
    if unknown:
        raise ValueError(f"tenant '{tenant}': unknown quota key(s) {sorted(unknown)}")
    try:
        rate = float(raw.get("rate", 0) or 0)
        burst = float(raw.get("burst", 0) or 0)
        in_flight = int(raw.get("max_in_flight", 0) or 0)
        share = float(raw.get("queue_share", 0) or 0)
    except (TypeError, ValueError):
        raise ValueError(f"tenant '{tenant}': quota values must be numbers") from None
    if rate < 0 or burst < 0 or in_flight < 0 or not 0 <= share <= 1:
        raise ValueError(f"tenant '{tenant}': quota values must be >= 0 and queue_share within [0, 1]")
    return Quota(rate=rate, burst=burst or (max(1.0, rate) if rate else 0.0), max_in_flight=in_flight,
                 queue_share=share)


def _key_digests(name: str, raw: dict[str, Any]) -> list[bytes]:
    """SHA-256 digests of a tenant's keys: given in clear (`keys`) or already hashed (`key_sha256`)."""
    own: list[bytes] = []
    for index, key in enumerate(_as_list(raw.get("keys"), f"tenant '{name}': keys")):
        if not isinstance(key, str) or len(key) < 8:
            raise ValueError(f"tenant '{name}': key #{index + 1} must be a string of at least 8 characters")
        own.append(_digest(key))
    for index, hexdigest in enumerate(_as_list(raw.get("key_sha256"), f"tenant '{name}': key_sha256")):
        try:
            raw_digest = bytes.fromhex(str(hexdigest))
        except ValueError:
            raw_digest = b""
        if len(raw_digest) != 32:
            raise ValueError(f"tenant '{name}': key_sha256 #{index + 1} is not a SHA-256 hex digest")
        own.append(raw_digest)
    return own


def parse_tenants(data: Any) -> TenantsConfig:
    """Validate a decoded tenants file. Raises ValueError naming what is wrong (never a key)."""
    if not isinstance(data, dict):
        raise ValueError("the tenants file must hold a mapping with a 'tenants' entry")
    unknown = set(data) - {"tenants", "anonymous", "queue_capacity", "operator_models"}
    if unknown:
        raise ValueError(f"unknown top-level key(s) {sorted(unknown)}")
    anonymous = frozenset(str(c) for c in _as_list(data.get("anonymous", list(DEFAULT_ANONYMOUS)), "anonymous"))
    if anonymous - ANONYMOUS_CATEGORIES:
        raise ValueError(f"anonymous: only {sorted(ANONYMOUS_CATEGORIES)} may be opened without a key")
    raw_tenants = data.get("tenants") or {}
    if not isinstance(raw_tenants, dict):
        raise ValueError("'tenants' must map tenant names to their settings")
    tenants: dict[str, Tenant] = {}
    digests: list[tuple[bytes, str]] = []
    seen: set[bytes] = set()
    for name, raw in raw_tenants.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"tenant name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
        if not isinstance(raw, dict):
            raise ValueError(f"tenant '{name}': settings must be a mapping")
        extra = set(raw) - {"keys", "key_sha256", "models", "owns", "rights", "weight", "quota"}
        if extra:
            raise ValueError(f"tenant '{name}': unknown key(s) {sorted(extra)}")
        rights = frozenset(str(r) for r in _as_list(raw.get("rights"), f"tenant '{name}': rights"))
        if rights - RIGHTS:
            raise ValueError(f"tenant '{name}': unknown right(s) {sorted(rights - RIGHTS)}; known: {sorted(RIGHTS)}")
        try:
            weight = float(raw.get("weight", 1.0))
        except (TypeError, ValueError):
            raise ValueError(f"tenant '{name}': weight must be a number") from None
        if weight <= 0:
            raise ValueError(f"tenant '{name}': weight must be > 0")
        models = tuple(str(m) for m in _as_list(raw.get("models"), f"tenant '{name}': models"))
        for digest in _key_digests(name, raw):
            if digest in seen:
                raise ValueError(f"tenant '{name}': a key is given to more than one tenant")
            seen.add(digest)
            digests.append((digest, name))
        owns = tuple(str(m) for m in _as_list(raw.get("owns"), f"tenant '{name}': owns"))
        tenants[name] = Tenant(name=name, models=models, rights=rights, weight=weight,
                               quota=_quota(raw.get("quota"), name), owns=owns)
    try:
        capacity = int(data.get("queue_capacity", 64))
    except (TypeError, ValueError):
        raise ValueError("queue_capacity must be an integer") from None
    if capacity <= 0:
        raise ValueError("queue_capacity must be > 0")
    operator_models = tuple(str(m) for m in _as_list(data.get("operator_models"), "operator_models"))
    return TenantsConfig(tenants=tenants, digests=tuple(digests), anonymous=anonymous, queue_capacity=capacity,
                         operator_models=operator_models)


def _load_yaml(path: str, text: str) -> Any:
    """Decode YAML with `safe_load` only: a tenants file is data, never Python objects to build."""
    import yaml  # a main dependency; imported here so servers without a tenants file never pay for it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None


def load_tenants_file(path: str) -> TenantsConfig:
    """Read and validate a tenants file: YAML for `.yaml`/`.yml`, JSON otherwise."""
    with open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    if path.endswith((".yaml", ".yml")):
        data = _load_yaml(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    try:
        return parse_tenants(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class TenantRegistry:
    """The live tenants configuration, reloaded when the file changes or on SIGHUP.

    `request_reload()` is safe to call from a signal handler installed with
    `loop.add_signal_handler` (it only sets an event); the watcher task does the work.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.config: TenantsConfig = load_tenants_file(path)
        self._stamp = self._file_stamp()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    # --- lookups -----------------------------------------------------------------------------
    def authenticate(self, key: str | None, category: str) -> Tenant | None:
        """The caller for `key`; ANONYMOUS for a keyless call to an open category; None = refuse (401)."""
        config = self.config
        if key:
            return config.lookup(key)
        if category in config.anonymous:
            return ANONYMOUS
        return None

    @property
    def queue_capacity(self) -> int:
        return self.config.queue_capacity

    # --- reloading ---------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the file; on an error keep the current configuration. True if it changed."""
        self._stamp = self._file_stamp()
        try:
            config = load_tenants_file(self.path)
        except (OSError, ValueError) as exc:
            log.error("tenants file not reloaded, keeping the previous configuration: %s", exc)
            return False
        self.config = config
        self.reloads += 1
        log.info("tenants file reloaded: %d tenant(s), %d key(s)", len(config.tenants), len(config.digests))
        return True

    def request_reload(self) -> None:
        """Ask the watcher to reload now (what SIGHUP does)."""
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._watch(), name="tritonpy-tenants-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _watch(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), RELOAD_POLL_S)
                forced = True
            except asyncio.TimeoutError:
                forced = False
            self._wake.clear()
            if forced or self._file_stamp() != self._stamp:
                self.reload()


# --- checks the facade makes (one place for both protocols) --------------------------------------
def require(right: str) -> Tenant | None:
    """Raise PERMISSION_DENIED (403) when the caller lacks `right`; returns the caller."""
    tenant = CURRENT.get()
    if tenant is not None and right not in tenant.rights:
        if tenant is ANONYMOUS:
            raise ServerError(ErrorCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        raise ServerError(ErrorCode.PERMISSION_DENIED, f"tenant '{tenant.name}' lacks the right '{right}'")
    return tenant


def check_visible(name: str) -> None:
    """Raise exactly what an unknown model raises when the caller may not see `name`."""
    tenant = CURRENT.get()
    if tenant is not None and not tenant.sees(name):
        raise ServerError(ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")


def may_see(name: str) -> bool:
    tenant = CURRENT.get()
    return tenant is None or tenant.sees(name)


def shm_name(name: str) -> str:
    """The registry name of the caller's region `name`: '<tenant>/<name>' (tenant names hold no '/')."""
    tenant = CURRENT.get()
    return name if tenant is None or not name else f"{tenant.name}/{name}"


def shm_own(names: Iterable[str]) -> dict[str, str]:
    """registry name -> client name, for the caller's regions among `names`."""
    tenant = CURRENT.get()
    if tenant is None:
        return {n: n for n in names}
    prefix = tenant.name + "/"
    return {n: n[len(prefix):] for n in names if n.startswith(prefix)}


UNAUTHENTICATED_MESSAGE = "missing or unknown API key (send 'Authorization: Bearer <key>')"


__all__ = [
    "ANONYMOUS", "CURRENT", "RIGHTS", "Quota", "Tenant", "TenantRegistry", "TenantsConfig",
    "UNAUTHENTICATED_MESSAGE", "check_visible", "current", "load_tenants_file", "may_see", "parse_tenants",
    "require", "shm_name", "shm_own",
]
