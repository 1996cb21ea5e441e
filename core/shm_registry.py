"""Client-registered shared-memory regions (system and CUDA), one namespace for both kinds.

A system region is checked against the real segment at registration and handed to workers by
reference (segment name + offset), so inputs are read and outputs written in the client's memory
without a copy in the server. A region in use by an in-flight request cannot be unregistered.

Tenant isolation: region names are namespaced per tenant by the facade, but the POSIX key names
memory itself. A key is therefore bound to the owner (tenant) that first registered it, for as long
as the object behind the key is the same one (same device and inode): another owner cannot register
it, even after the first one unregistered its regions. When the key is unlinked and re-created by
someone, and the old owner holds no region on it, the binding lapses and the next registrant owns it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from tritonpy.core.errors import ErrorCode, ServerError, invalid, not_found
from tritonpy.proto.messages import TensorRef
from tritonpy.shm.cuda import encode_segment as encode_cuda_segment
from tritonpy.shm.segment import identity_of, valid_name

log = logging.getLogger("tritonpy.core.shm_registry")

RESERVED_PREFIX = "triton_python_backend_shm_region_"
OWN_PREFIX = "tritonpy_"
# Above this many key bindings, registering sweeps the ones whose object is gone.
KEY_BINDINGS_SWEEP_AT = 4096


@dataclasses.dataclass(slots=True)
class SystemRegion:
    name: str
    key: str
    offset: int
    byte_size: int
    in_use: int = 0
    owner: str | None = None


@dataclasses.dataclass(slots=True)
class CudaRegion:
    name: str
    raw_handle: bytes
    device_id: int
    byte_size: int
    in_use: int = 0


class ShmRegistry:
    def __init__(self, *, allow_client_shm: bool) -> None:
        self.allow = allow_client_shm
        self._system: dict[str, SystemRegion] = {}
        self._cuda: dict[str, CudaRegion] = {}
        # POSIX key -> (owner, (st_dev, st_ino) of the object it was bound with)
        self._key_owner: dict[str, tuple[str | None, tuple[int, int]]] = {}

    # --- guards ----------------------------------------------------------------------------
    def _check_allowed(self) -> None:
        if not self.allow:
            raise ServerError(
                ErrorCode.UNSUPPORTED,
                "client shared memory is disabled on this server (start it with --allow-client-shm=true)",
            )

    def _check_new_name(self, name: str) -> None:
        if not name:
            raise invalid("shared memory region name must not be empty")
        if name in self._system or name in self._cuda:
            raise ServerError(ErrorCode.ALREADY_EXISTS, f"shared memory region '{name}' already in manager")

    # --- system ----------------------------------------------------------------------------
    def register_system(self, name: str, key: str, offset: int, byte_size: int, owner: str | None = None) -> None:
        """`owner` is the registering tenant's name (None on a server without tenants)."""
        self._check_allowed()
        self._check_new_name(name)
        if not isinstance(key, str) or not valid_name(key):
            raise invalid(f"shared memory key '{key}' is not a valid POSIX shared memory name")
        bare = key.lstrip("/")
        if bare.startswith((RESERVED_PREFIX, OWN_PREFIX)):
            raise invalid(f"shared memory key '{key}' uses a prefix reserved by the server")
        if not isinstance(offset, int) or not isinstance(byte_size, int) or offset < 0 or byte_size <= 0:
            raise invalid("shared memory region offset must be >= 0 and byte_size > 0")
        identity = identity_of(key)
        if identity is None:
            raise invalid(f"Unable to open shared memory region '{name}': shared memory '{key}' cannot be opened")
        size = identity[2]
        if offset + byte_size > size:
            raise invalid(
                f"shared memory region '{name}': offset {offset} + byte_size {byte_size} exceeds the "
                f"{size} bytes of '{key}'"
            )
        self._bind_key(key, owner, (identity[0], identity[1]))
        self._system[name] = SystemRegion(name, key, offset, byte_size, owner=owner)
        log.info("registered system shared memory region '%s' (key %s, %d bytes)", name, key, byte_size)

    def _bind_key(self, key: str, owner: str | None, identity: tuple[int, int]) -> None:
        """Bind `key` to `owner`, or refuse (PERMISSION_DENIED) when another owner holds it."""
        bound = self._key_owner.get(key)
        if bound is not None and bound[0] != owner:
            held = any(r.key == key and r.owner == bound[0] for r in self._system.values())
            if held or bound[1] == identity:
                raise ServerError(
                    ErrorCode.PERMISSION_DENIED,
                    f"shared memory key '{key}' is registered by another tenant; use a key of your own",
                )
        if len(self._key_owner) >= KEY_BINDINGS_SWEEP_AT:
            self._sweep_bindings()
        self._key_owner[key] = (owner, identity)

    def _sweep_bindings(self) -> None:
        """Forget bindings of keys nobody has registered and whose object is gone or re-created."""
        registered = {r.key for r in self._system.values()}
        for key, (_, identity) in list(self._key_owner.items()):
            if key in registered:
                continue
            now = identity_of(key)
            if now is None or (now[0], now[1]) != identity:
                del self._key_owner[key]

    def system_status(self, name: str = "") -> list[dict[str, Any]]:
        """Triton's JSON rows for system regions."""
        if name:
            region = self._system.get(name)
            if region is None:
                raise not_found(f"Unable to find system shared memory region: '{name}'")
            regions = [region]
        else:
            regions = list(self._system.values())
        return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]

    def unregister_system(self, name: str = "") -> None:
        self._check_allowed()
        names = [name] if name else list(self._system)
        for n in names:
            region = self._system.get(n)
            if region is None:
                continue  # Triton treats unregistering an unknown region as success
            if region.in_use:
                raise ServerError(
                    ErrorCode.UNAVAILABLE,
                    f"shared memory region '{n}' is in use by {region.in_use} in-flight request(s); retry later",
                )
            del self._system[n]

    # --- cuda ------------------------------------------------------------------------------
    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._check_allowed()
        self._check_new_name(name)
        if not raw_handle:
            raise invalid("raw_handle must not be empty")
        if device_id < 0 or byte_size <= 0:
            raise invalid("device_id must be >= 0 and byte_size > 0")
        count = _cuda_device_count()
        if count <= 0:
            raise ServerError(
                ErrorCode.UNAVAILABLE,
                "CUDA shared memory needs an NVIDIA GPU with its driver and the 'cuda-python' package "
                "(pip install 'tritonpy[gpu]'); this server has no usable GPU",
            )
        if device_id >= count:
            raise invalid(f"device_id {device_id} does not exist: this server has {count} GPU(s)")
        self._cuda[name] = CudaRegion(name, bytes(raw_handle), device_id, byte_size)

    def cuda_status(self, name: str = "") -> list[dict[str, Any]]:
        """Triton's JSON rows for CUDA regions."""
        if name:
            region = self._cuda.get(name)
            if region is None:
                raise not_found(f"Unable to find cuda shared memory region: '{name}'")
            regions = [region]
        else:
            regions = list(self._cuda.values())
        return [{"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in regions]

    def unregister_cuda(self, name: str = "") -> None:
        self._check_allowed()
        for n in [name] if name else list(self._cuda):
            region = self._cuda.get(n)
            if region is None:
                continue
            if region.in_use:
                raise ServerError(
                    ErrorCode.UNAVAILABLE, f"shared memory region '{n}' is in use by in-flight requests; retry later"
                )
            del self._cuda[n]

    # --- use by requests -------------------------------------------------------------------
    def resolve(
        self, region: str, offset: int, byte_size: int, *, tensor: str
    ) -> tuple[TensorRef, SystemRegion | CudaRegion]:
        """The worker-side reference for a slice of a registered region (bounds-checked).

        System regions are passed by segment name; CUDA regions by their IPC handle, which the
        worker opens once (shm/cuda.py)."""
        r = self._system.get(region)
        if r is None:
            c = self._cuda.get(region)
            if c is None:
                raise not_found(f"Unable to find shared memory region: '{region}'")
            self._check_bounds(region, c.byte_size, offset, byte_size, tensor)
            segment = encode_cuda_segment(c.device_id, c.raw_handle)
            return TensorRef(tensor, "", [], segment=segment, offset=offset, nbytes=byte_size), c
        self._check_bounds(region, r.byte_size, offset, byte_size, tensor)
        return TensorRef(tensor, "", [], segment=r.key, offset=r.offset + offset, nbytes=byte_size), r

    @staticmethod
    def _check_bounds(region: str, size: int, offset: int, byte_size: int, tensor: str) -> None:
        if offset < 0 or byte_size < 0 or offset + byte_size > size:
            raise invalid(
                f"tensor '{tensor}': shared memory offset {offset} + byte_size {byte_size} is out of bounds of "
                f"region '{region}' ({size} bytes)"
            )

    def acquire(self, regions: Sequence[SystemRegion | CudaRegion]) -> None:
        for r in regions:
            r.in_use += 1

    def release(self, regions: Sequence[SystemRegion | CudaRegion]) -> None:
        for r in regions:
            r.in_use = max(0, r.in_use - 1)


def _cuda_device_count() -> int:
    """GPUs visible through the CUDA runtime; 0 without cuda-python, a driver or a device."""
    try:  # imported lazily: CUDA exists only on GPU machines
        from cuda.bindings import runtime
    except ImportError:
        return 0
    try:
        err, count = runtime.cudaGetDeviceCount()
    except Exception:  # noqa: BLE001 - any failure of a broken driver install means "no GPU", not a failed request
        return 0
    return int(count or 0) if int(err) == 0 else 0
