"""Real per-worker ceilings through cgroups: memory (hard, and soft), CPU quota and share, pids.

The mechanism is chosen once per server process, in this order:

* **cgroup v2**, when this server owns a delegated subtree: its own cgroup (from /proc/self/cgroup)
  is writable and offers the `memory` controller to a child. Files: memory.max, memory.high (soft:
  the kernel throttles and reclaims above it), cpu.max, cpu.weight, pids.max; OOM kills are counted
  in memory.events `oom_kill`.
* **cgroup v1**, when the `memory` hierarchy is mounted and writable (the `cpu` and `pids`
  hierarchies are used when they are too). Files: memory.limit_in_bytes, memory.memsw.limit_in_bytes
  (so swap cannot stretch the ceiling), memory.soft_limit_in_bytes, cpu.cfs_quota_us/cfs_period_us,
  cpu.shares, pids.max; OOM kills in memory.oom_control `oom_kill`.
* **RLIMIT_AS**, the last resort (core/instance/limits.py): address space, not memory; no CPU
  quota and no pids limit.

Layout: one parent group per server process (`tritonpy-<pid>`, under the server's own cgroup in each
hierarchy, so the server's own limits still bound its workers), one child per worker instance.
The launcher writes its own pid into the child's `cgroup.procs` before the worker module is
imported, and the core moves the pid in again right after spawn (for worker commands that skip the
launcher). A worker's group is removed when its instance stops, the parent when the server stops,
and parents left by a server that died are swept at the next start.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import re
import signal
import time
from typing import Iterable

log = logging.getLogger("tritonpy.core.instance.cgroups")

__all__ = ["CgroupLimits", "CgroupHost", "WorkerGroup", "acquire", "host", "mechanism", "release", "shutdown"]

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
_PARENT_RE = re.compile(r"^tritonpy-(\d+)$")
_names = itertools.count(1)


@dataclasses.dataclass(frozen=True, slots=True)
class CgroupLimits:
    memory_bytes: int = 0  # hard ceiling; the kernel's OOM killer acts above it
    memory_soft_bytes: int = 0  # v2 memory.high / v1 soft_limit_in_bytes
    cpu_quota: float = 0.0  # CPUs' worth of time per period, e.g. 0.5
    cpu_shares: int = 0  # relative weight when CPUs are contended (v1 shares; 1024 = default)
    pids: int = 0  # max tasks (processes + threads)

    def __bool__(self) -> bool:
        return bool(self.memory_bytes or self.memory_soft_bytes or self.cpu_quota or self.cpu_shares or self.pids)


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _own_paths() -> tuple[dict[str, str], str | None]:
    """(v1 controller -> this process's cgroup path, v2 path or None), from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        for controller in parts[1].split(","):
            if controller:
                v1[controller] = parts[2]
    return v1, v2


def _mounts() -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """(v1 controller -> (mount point, mount root), v2 (mount point, root)), from mountinfo."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = fields[3], fields[4]
        if tail[0] == "cgroup2":
            v2 = v2 or (point, root)
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in V1_CONTROLLERS:
                    v1.setdefault(option, (point, root))
    return v1, v2


def _join(mount: tuple[str, str], path: str) -> str:
    point, root = mount
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return os.path.join(point, rel.lstrip("/"))


def _remove_tree(path: str, attempts: int = 20, *, kill: bool = True) -> bool:
    """rmdir a group (children first), killing what still runs in it when `kill`. True when gone."""
    if not os.path.isdir(path):
        return True
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path, attempts, kill=kill)
    for attempt in range(attempts if kill else 1):
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if not kill:
                return False
            for pid in _read(os.path.join(path, "cgroup.procs")).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError, PermissionError):
                    pass
            time.sleep(0.02 * (attempt + 1))
    log.warning("cgroup %s could not be removed", path)
    return False


class WorkerGroup:
    """One worker instance's group (a directory per hierarchy in use)."""

    def __init__(self, host: "CgroupHost", dirs: dict[str, str], limits: CgroupLimits) -> None:
        self.host = host
        self.dirs = dirs  # controller ('memory', 'cpu', 'pids'; 'unified' for v2) -> directory
        self.limits = limits
        self._oom_seen = self.oom_kills()

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def add(self, pid: int) -> None:
        for path in self.procs_files:
            try:
                _write(path, str(pid))
            except ProcessLookupError:
                return  # it already exited: its exit is reported elsewhere
            except OSError as exc:
                log.warning("could not move worker pid %d into %s: %s", pid, path, exc)

    def oom_kills(self) -> int:
        if self.host.version == 2:
            return _counter(_read(os.path.join(self.dirs["unified"], "memory.events")), "oom_kill")
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        return _counter(_read(os.path.join(memory, "memory.oom_control")), "oom_kill")

    def new_oom_kill(self) -> bool:
        """Whether the kernel's OOM killer acted in this group since the last call."""
        count = self.oom_kills()
        seen, self._oom_seen = self._oom_seen, count
        return count > seen

    def remove(self) -> None:
        for path in self.dirs.values():
            _remove_tree(path)
        self.dirs = {}


class CgroupHost:
    """The per-server parent group(s) and how to make worker groups under them."""

    def __init__(self, version: int, parents: dict[str, str]) -> None:
        self.version = version
        self.parents = parents  # controller -> parent directory (v2: {'unified': dir})

    @property
    def description(self) -> str:
        if self.version == 2:
            return f"cgroup v2 (memory, cpu, pids) under {self.parents['unified']}"
        return f"cgroup v1 ({', '.join(sorted(self.parents))}) under " + ", ".join(sorted(self.parents.values()))

    def make_group(self, label: str, limits: CgroupLimits) -> WorkerGroup:
        """Create and configure a worker's group. Raises OSError when the kernel refuses a limit."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:80] + f"-{next(_names)}"
        dirs: dict[str, str] = {}
        try:
            for controller, parent in self.parents.items():
                path = os.path.join(parent, name)
                os.mkdir(path)
                dirs[controller] = path
            if self.version == 2:
                _limit_v2(dirs["unified"], limits)
            else:
                _limit_v1(dirs, limits)
        except OSError:
            for path in dirs.values():
                _remove_tree(path)
            raise
        return WorkerGroup(self, dirs, limits)

    def close(self) -> None:
        for path in self.parents.values():
            _remove_tree(path)


def _limit_v2(path: str, limits: CgroupLimits) -> None:
    if limits.memory_bytes:
        _write(os.path.join(path, "memory.max"), str(limits.memory_bytes))
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), "0")
    if limits.memory_soft_bytes:
        _write(os.path.join(path, "memory.high"), str(limits.memory_soft_bytes))
    if limits.cpu_quota:
        _write(os.path.join(path, "cpu.max"), f"{max(1000, int(limits.cpu_quota * CPU_PERIOD_US))} {CPU_PERIOD_US}")
    if limits.cpu_shares:
        _write(os.path.join(path, "cpu.weight"), str(max(1, min(10000, limits.cpu_shares * 100 // 1024))))
    if limits.pids:
        _write(os.path.join(path, "pids.max"), str(limits.pids))


def _limit_v1(dirs: dict[str, str], limits: CgroupLimits) -> None:
    memory, cpu, pids = dirs.get("memory"), dirs.get("cpu"), dirs.get("pids")
    if memory is not None:
        if limits.memory_bytes:
            _write(os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory_bytes))
            memsw = os.path.join(memory, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # memory + swap, set after the memory limit (it must be >= it)
                _write(memsw, str(limits.memory_bytes))
        if limits.memory_soft_bytes:
            _write(os.path.join(memory, "memory.soft_limit_in_bytes"), str(limits.memory_soft_bytes))
    if cpu is not None:
        if limits.cpu_quota:
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(max(1000, int(limits.cpu_quota * CPU_PERIOD_US))))
        if limits.cpu_shares:
            _write(os.path.join(cpu, "cpu.shares"), str(max(2, limits.cpu_shares)))
    if pids is not None and limits.pids:
        _write(os.path.join(pids, "pids.max"), str(limits.pids))


def _sweep_stale(bases: Iterable[str]) -> None:
    """Remove the parents of tritonpy servers that no longer run (a crash, a SIGKILL)."""
    for base in bases:
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            match = _PARENT_RE.match(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and not _alive(int(match.group(1))):
                # Empty groups only: a pid this process cannot see may be a live server in another
                # pid namespace, whose workers must not be killed.
                _remove_tree(entry.path, kill=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_v2(mount: tuple[str, str], path: str) -> CgroupHost | None:
    base = _join(mount, path)
    wanted = {"memory", "cpu", "pids"}
    offered = set(_read(os.path.join(base, "cgroup.controllers")).split())
    if "memory" not in offered:
        return None
    _sweep_stale([base])
    parent = os.path.join(base, f"tritonpy-{os.getpid()}")
    try:
        os.mkdir(parent)
    except FileExistsError:
        pass
    except OSError:
        return None
    enabled = set(_read(os.path.join(parent, "cgroup.controllers")).split())
    if "memory" not in enabled:
        try:  # delegated but not yet enabled for children (fails while the base itself holds processes)
            _write(os.path.join(base, "cgroup.subtree_control"), " ".join(f"+{c}" for c in sorted(wanted & offered)))
        except OSError:
            pass
        enabled = set(_read(os.path.join(parent, "cgroup.controllers")).split())
    try:
        if "memory" not in enabled:
            raise OSError("the memory controller is not delegated")
        _write(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in sorted(wanted & enabled)))
    except OSError:
        _remove_tree(parent)
        return None
    return CgroupHost(2, {"unified": parent})


def _try_v1(mounts: dict[str, tuple[str, str]], paths: dict[str, str]) -> CgroupHost | None:
    parents: dict[str, str] = {}
    for controller in V1_CONTROLLERS:
        if controller not in mounts or controller not in paths:
            continue
        base = _join(mounts[controller], paths[controller])
        _sweep_stale([base])
        parent = os.path.join(base, f"tritonpy-{os.getpid()}")
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError:
            continue
        parents[controller] = parent
    if "memory" not in parents:
        for parent in parents.values():
            _remove_tree(parent)
        return None
    return CgroupHost(1, parents)


_host: CgroupHost | None = None
_detected = False


_users = 0


def host() -> CgroupHost | None:
    """This server's cgroup host, detected (and its parents created) once; None = RLIMIT_AS only."""
    global _host, _detected
    if not _detected:
        _detected = True
        atexit.register(shutdown)  # a process that never stops a server still removes its parents
        if os.environ.get("TRITONPY_CGROUPS", "").lower() in ("0", "off", "false", "no"):
            return None
        v1_paths, v2_path = _own_paths()
        v1_mounts, v2_mount = _mounts()
        if v2_mount is not None and v2_path is not None:
            _host = _try_v2(v2_mount, v2_path)
        if _host is None:
            _host = _try_v1(v1_mounts, v1_paths)
    return _host


def mechanism() -> str:
    """What enforces worker limits here, for the start-up log line."""
    found = host()
    if found is None:
        return "RLIMIT_AS only (no writable cgroup: no CPU quota, no pids limit)"
    return found.description


def acquire() -> str:
    """A server starts: detect the mechanism (for its start-up log line) and count the user."""
    global _users
    _users += 1
    return mechanism()


def release() -> None:
    """A server stopped: when it was the last one in this process, remove the parent groups."""
    global _users
    _users = max(0, _users - 1)
    if _users == 0:
        shutdown()


def shutdown() -> None:
    """Remove this process's parent groups (its workers' groups are gone by now)."""
    global _host, _detected
    if _host is not None:
        _host.close()
    _host, _detected = None, False
