"""What a model instance is made from (`InstanceSpec`), the states it goes through, and the names
of the OS resources it owns.

Every name carries a per-instance short id, so two instances with the same name (two models that
both name a group "gpu", or two versions of one model) never share a socket or a segment, and
everything one instance leaves behind can be swept by one name prefix.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import secrets

from tritonpy.proto import messages as m

__all__ = ["InstanceSpec", "InstanceState", "ResourceNames", "float_setting", "init_message"]

log = logging.getLogger("tritonpy.core.instance")

# A Unix socket path must stay under ~107 bytes (sun_path).
MAX_SOCKET_PATH = 100

_IDS_IN_USE: set[str] = set()


@dataclasses.dataclass(slots=True, kw_only=True)
class InstanceSpec:
    """Everything needed to start one worker. Backend-config keys, when present, win over the
    timeouts here: `stub-timeout-seconds` (start-up) and `heartbeat-timeout-seconds`."""

    model_name: str
    model_version: int
    model_dir: str  # <repository>/<model>
    instance_name: str
    kind: str = "KIND_CPU"
    device_id: int = 0
    backend: str
    config_json: str
    autocomplete: bool = False
    backend_config: dict[str, str] = dataclasses.field(default_factory=dict)
    runtime_dir: str
    heartbeat_interval_s: float = 0.2
    heartbeat_timeout_s: float = 5.0
    startup_timeout_s: float = 30.0
    log_verbose: int = 0


def init_message(spec: InstanceSpec, *, config_json: str, autocomplete: bool, output_prefix: str) -> m.Init:
    """The spec as the worker's `Init` (with the config the instance runs with by now)."""
    return m.Init(
        model_name=spec.model_name,
        model_version=spec.model_version,
        model_repository=spec.model_dir,
        instance_name=spec.instance_name,
        instance_kind=spec.kind,
        device_id=spec.device_id,
        backend=spec.backend,
        config_json=config_json,
        autocomplete=autocomplete,
        output_prefix=output_prefix,
        backend_config=dict(spec.backend_config),
        log_verbose=spec.log_verbose,
        heartbeat_interval_s=spec.heartbeat_interval_s,
    )


class InstanceState(enum.Enum):
    """Lifecycle of an instance; only READY accepts batches."""

    NEW = "new"  # constructed, nothing opened: cannot serve
    STARTING = "starting"  # first spawn and handshake: cannot serve
    READY = "ready"  # worker initialized and healthy: serves
    RESTARTING = "restarting"  # worker died; waiting out the backoff or re-spawning: cannot serve
    STOPPING = "stopping"  # draining and finalizing: no new batches
    STOPPED = "stopped"  # everything released (terminal): cannot serve


class ResourceNames:
    """The socket and shared-memory names of one instance (computed, nothing created)."""

    __slots__ = ("short_id", "shm_prefix", "input_prefix", "output_prefix", "socket_path", "endpoint")

    def __init__(self, spec: InstanceSpec) -> None:
        self.short_id = _new_short_id()
        base = re.sub(r"[^A-Za-z0-9_]", "_", f"tritonpy_{os.getpid()}_{self.short_id}_{spec.instance_name}")[:160]
        self.shm_prefix = f"/{base}_"  # every segment of this instance, inputs and outputs
        self.input_prefix = f"/{base}_i"
        self.output_prefix = f"/{base}_o"
        # The readable part of the socket name shrinks when the runtime directory is deep.
        room = max(0, MAX_SOCKET_PATH - len(os.path.join(spec.runtime_dir, f"_{self.short_id}.sock")))
        readable = re.sub(r"[^A-Za-z0-9_.\-]", "_", spec.instance_name)[: min(room, 60)]
        self.socket_path = os.path.join(spec.runtime_dir, f"{readable}_{self.short_id}.sock")
        self.endpoint = f"ipc://{self.socket_path}"

    def retire(self) -> None:
        """The instance is gone: its short id may be used again."""
        _IDS_IN_USE.discard(self.short_id)


def _new_short_id() -> str:
    while True:
        sid = secrets.token_hex(3)
        if sid not in _IDS_IN_USE:
            _IDS_IN_USE.add(sid)
            return sid


def float_setting(config: dict[str, str], key: str, default: float) -> float:
    """A positive number from the backend config (strings), else `default`."""
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        log.warning("backend config '%s=%s' is not a number; using %s", key, raw, default)
        return default
    return value if value > 0 else default
