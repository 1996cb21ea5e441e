"""Per-model limits for backend worker processes, from the model config's `parameters`.

    parameters { key: "TRITONPY_MEMORY_LIMIT_MB" value { string_value: "1024" } }  # address-space ceiling
    parameters { key: "TRITONPY_CPU_AFFINITY"   value { string_value: "0,2-3" } }  # CPUs the worker may use
    parameters { key: "TRITONPY_NUM_THREADS"    value { string_value: "2" } }      # math-library thread caps
    parameters { key: "TRITONPY_MEMORY_SOFT_LIMIT_MB" ... }  # cgroup soft limit (v2 memory.high)
    parameters { key: "TRITONPY_CPU_QUOTA"      value { string_value: "0.5" } }    # CPUs' worth of time
    parameters { key: "TRITONPY_CPU_SHARES"     value { string_value: "512" } }    # weight (1024 = default)
    parameters { key: "TRITONPY_PIDS_LIMIT"     value { string_value: "64" } }     # processes + threads

How they are applied, and why this way:

* The worker is started through a tiny launcher (`python -c LAUNCHER <json> -- <worker args>`)
  that sets RLIMIT_AS and the CPU affinity on itself and then runs the worker module in the same
  process. Limits set by the process on itself need no `preexec_fn` (unsafe in a threaded server
  and not offered by every event loop), and they are inherited by anything the model spawns.
* Memory, CPU and pids ceilings are cgroups when the server can write one (core/instance/cgroups.py:
  v2 in a delegated subtree, else v1): one group per worker instance, joined by the launcher before
  the worker module is imported. The kernel's OOM killer then kills the worker alone; the group's
  `oom_kill` counter tells that death from any other SIGKILL.
* Without a writable cgroup the memory ceiling is RLIMIT_AS (the last resort): an allocation past it
  fails, Python raises MemoryError, and the worker (told so by `TRITONPY_OOM_EXIT_CODE`) exits with
  that distinctive code instead of reporting a request error and living on half-broken. The core
  maps the code to "out of memory", restarts the worker like any other death, and counts it
  (`tritonpy_worker_out_of_memory`). The start-up log names the mechanism in force.
* Thread caps are the environment variables the math libraries read at import time.
* The same launcher also serves per-model Python environments (core/instance/python_env.py): it runs in the
  environment's interpreter and appends this server's own site directories at the end of
  `sys.path`, so the model's packages win and our package and numpy are still found.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import site
import sys
from typing import Any

from tritonpy.core.instance import cgroups
from tritonpy.core.instance.cgroups import CgroupLimits, WorkerGroup

log = logging.getLogger("tritonpy.core.instance.limits")

__all__ = [
    "WorkerLimits", "WorkerLaunch", "prepare_launch", "EXIT_OUT_OF_MEMORY", "OUT_OF_MEMORY", "worker_command",
    "is_out_of_memory", "PARAM_MEMORY", "PARAM_AFFINITY", "PARAM_THREADS",
    "PARAM_MEMORY_SOFT", "PARAM_CPU_QUOTA", "PARAM_CPU_SHARES", "PARAM_PIDS",
]

PARAM_MEMORY = "TRITONPY_MEMORY_LIMIT_MB"
PARAM_AFFINITY = "TRITONPY_CPU_AFFINITY"
PARAM_THREADS = "TRITONPY_NUM_THREADS"
PARAM_MEMORY_SOFT = "TRITONPY_MEMORY_SOFT_LIMIT_MB"
PARAM_CPU_QUOTA = "TRITONPY_CPU_QUOTA"
PARAM_CPU_SHARES = "TRITONPY_CPU_SHARES"
PARAM_PIDS = "TRITONPY_PIDS_LIMIT"
# The worker's exit code after a MemoryError under a memory ceiling (chosen clear of 0-2, 126-128+n).
EXIT_OUT_OF_MEMORY = 86
OUT_OF_MEMORY = "out of memory"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "TRITONPY_NUM_THREADS")

# Runs as `python -c LAUNCHER <spec json> <worker argv...>`; imports nothing of ours before the
# worker module itself, so the room rules of the worker still hold.
LAUNCHER = """
import json, os, resource, runpy, site, sys
spec = json.loads(sys.argv[1])
for procs in spec.get("cgroup_procs", ()):
    with open(procs, "w") as fh:
        fh.write(str(os.getpid()))
if spec.get("as_bytes"):
    resource.setrlimit(resource.RLIMIT_AS, (spec["as_bytes"], spec["as_bytes"]))
if spec.get("cpus"):
    os.sched_setaffinity(0, spec["cpus"])
for path in spec.get("site_dirs", ()):
    if path not in sys.path:
        site.addsitedir(path)
sys.argv = [spec["module"]] + sys.argv[2:]
runpy.run_module(spec["module"], run_name="__main__", alter_sys=True)
"""


def _parameters(config_json: str) -> dict[str, str]:
    try:
        config = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError:
        return {}
    out: dict[str, str] = {}
    for key, value in (config.get("parameters") or {}).items():
        out[key] = str(value.get("string_value", "")) if isinstance(value, dict) else str(value)
    return out


def parse_cpus(text: str) -> tuple[int, ...]:
    """'0,2-3' -> (0, 2, 3). Raises ValueError for anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        first, last = int(lo), int(hi) if dash else int(lo)
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range '{part}'")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("no CPU given")
    return tuple(sorted(cpus))


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerLimits:
    memory_bytes: int = 0
    cpus: tuple[int, ...] = ()
    threads: int = 0
    memory_soft_bytes: int = 0
    cpu_quota: float = 0.0
    cpu_shares: int = 0
    pids: int = 0

    def __bool__(self) -> bool:
        return bool(self.memory_bytes or self.cpus or self.threads or self.cgroup_limits())

    def cgroup_limits(self) -> CgroupLimits:
        return CgroupLimits(memory_bytes=self.memory_bytes, memory_soft_bytes=self.memory_soft_bytes,
                            cpu_quota=self.cpu_quota, cpu_shares=self.cpu_shares, pids=self.pids)

    @classmethod
    def from_config_json(cls, config_json: str) -> "WorkerLimits":
        """The limits a model config asks for. Raises ValueError with the parameter at fault."""
        params = _parameters(config_json)
        memory = cpus = threads = None
        try:
            if params.get(PARAM_MEMORY):
                memory = int(float(params[PARAM_MEMORY]) * 1024 * 1024)
                if memory <= 0:
                    raise ValueError
        except ValueError:
            raise ValueError(f"parameter {PARAM_MEMORY}: expected a positive number of MiB, "
                             f"got '{params[PARAM_MEMORY]}'") from None
        if params.get(PARAM_AFFINITY):
            try:
                cpus = parse_cpus(params[PARAM_AFFINITY])
            except ValueError as exc:
                raise ValueError(f"parameter {PARAM_AFFINITY}: {exc} (expected e.g. '0,2-3')") from None
            available = os.sched_getaffinity(0)
            if not set(cpus) <= available:
                raise ValueError(f"parameter {PARAM_AFFINITY}: CPU(s) {sorted(set(cpus) - available)} "
                                 f"are not available to this server ({sorted(available)})")
        try:
            if params.get(PARAM_THREADS):
                threads = int(params[PARAM_THREADS])
                if threads <= 0:
                    raise ValueError
        except ValueError:
            raise ValueError(f"parameter {PARAM_THREADS}: expected a positive integer, "
                             f"got '{params[PARAM_THREADS]}'") from None
        soft = _positive(params, PARAM_MEMORY_SOFT, "a positive number of MiB")
        quota = _positive(params, PARAM_CPU_QUOTA, "a positive number of CPUs, e.g. 0.5")
        shares = _positive(params, PARAM_CPU_SHARES, "a positive integer weight", integer=True)
        pids = _positive(params, PARAM_PIDS, "a positive integer", integer=True)
        return cls(memory_bytes=memory or 0, cpus=cpus or (), threads=threads or 0,
                   memory_soft_bytes=int(soft * 1024 * 1024), cpu_quota=quota, cpu_shares=int(shares), pids=int(pids))

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        if self.threads:
            for var in THREAD_VARS:
                env[var] = str(self.threads)
        if self.memory_bytes:
            env["TRITONPY_OOM_EXIT_CODE"] = str(EXIT_OUT_OF_MEMORY)
        return env


def _positive(params: dict[str, str], key: str, expected: str, *, integer: bool = False) -> float:
    """A parameter that must be a positive number (0 when absent). Raises ValueError naming it."""
    text = params.get(key, "")
    if not text:
        return 0
    try:
        value = int(text) if integer else float(text)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"parameter {key}: expected {expected}, got '{text}'") from None
    return value


def own_site_dirs() -> list[str]:
    """This server's package directories (venv site-packages, user site, editable-install paths)."""
    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    if isinstance(user, str) and os.path.isdir(user):
        dirs.append(user)
    return [d for d in dirs if os.path.isdir(d)]


def worker_command(argv: list[str], module: str, *, limits: WorkerLimits, python: str = "",
                   group: WorkerGroup | None = None) -> list[str]:
    """The command that runs the worker `argv` (`[sys.executable, '-m', module, *args]`) under
    `limits` and, when given, with another interpreter. Unchanged when neither applies."""
    if not limits and not python:
        return list(argv)
    if argv[:3] != [sys.executable, "-m", module]:
        return list(argv)  # a custom worker command (tests): leave it alone
    spec: dict[str, Any] = {"module": module}
    if group is not None:
        spec["cgroup_procs"] = group.procs_files
    if limits.memory_bytes and (group is None or "memory" not in group.dirs and "unified" not in group.dirs):
        spec["as_bytes"] = limits.memory_bytes  # the last resort: no memory cgroup
    if limits.cpus:
        spec["cpus"] = list(limits.cpus)
    if python:
        spec["site_dirs"] = own_site_dirs()
    return [python or sys.executable, "-c", LAUNCHER, json.dumps(spec), *argv[3:]]


def is_out_of_memory(returncode: int | None, limits: WorkerLimits, group: WorkerGroup | None = None) -> bool:
    """A death at the memory ceiling: the cgroup's OOM killer acted, or MemoryError under RLIMIT_AS."""
    if group is not None and group.new_oom_kill():
        return True
    return bool(limits.memory_bytes) and returncode == EXIT_OUT_OF_MEMORY


@dataclasses.dataclass(slots=True)
class WorkerLaunch:
    """How one model instance starts its workers: limits and interpreter, decided once at load."""

    limits: WorkerLimits = WorkerLimits()
    python: str = ""  # '' = this server's interpreter
    group: WorkerGroup | None = None  # the instance's cgroup (core/instance/cgroups.py), None = none

    def argv(self, argv: list[str], module: str) -> list[str]:
        return worker_command(argv, module, limits=self.limits, python=self.python, group=self.group)

    def spawned(self, pid: int | None) -> None:
        """Right after spawn: the worker into its group (the launcher did so already when it ran)."""
        if self.group is not None and pid is not None:
            self.group.add(pid)

    def close(self) -> None:
        """The instance stopped: remove its group."""
        group, self.group = self.group, None
        if group is not None:
            group.remove()

    def env(self) -> dict[str, str] | None:
        """The worker's environment; None (inherit ours) when nothing is limited."""
        return self.limits.environment(dict(os.environ)) if self.limits else None

    def note_exit(self, returncode: int | None, how: str, stats: Any) -> str:
        """`how` the worker ended, as errors show it; counts a death at the memory ceiling."""
        if not is_out_of_memory(returncode, self.limits, self.group):
            return how
        if stats is not None:
            stats.worker_out_of_memory += 1
            stats.last_worker_failure = OUT_OF_MEMORY
        if self.group is not None:
            mib = self.group.limits.memory_bytes >> 20
            return f"{OUT_OF_MEMORY}: killed by the kernel at its {mib} MiB cgroup memory limit ({how})"
        return f"{OUT_OF_MEMORY}: exceeded its {self.limits.memory_bytes >> 20} MiB ceiling ({how})"


async def prepare_launch(
    model_dir: str, config_json: str, backend_config: dict[str, str], *, label: str = ""
) -> WorkerLaunch:
    """Parse the limits, make the instance's cgroup and build/find the model's interpreter. Raises
    ValueError, OSError or model_env.EnvironmentBuildError with the reason the model fails to load."""
    from tritonpy.core.instance import python_env as model_env

    limits = WorkerLimits.from_config_json(config_json)
    group = _make_group(label, limits)
    try:
        python = await model_env.prepare(model_dir, config_json, cache_dir=model_env.default_cache_dir(backend_config))
    except BaseException:
        if group is not None:
            group.remove()
        raise
    return WorkerLaunch(limits=limits, python=python, group=group)


def _make_group(label: str, limits: WorkerLimits) -> WorkerGroup | None:
    wanted = limits.cgroup_limits()
    if not wanted:
        return None
    found = cgroups.host()
    if found is None:
        if wanted.cpu_quota or wanted.cpu_shares or wanted.pids or wanted.memory_soft_bytes:
            log.warning("[%s] no writable cgroup: CPU quota/shares, pids and soft memory limits are not enforced "
                        "(the memory ceiling is RLIMIT_AS)", label)
        return None
    try:
        return found.make_group(label or "worker", wanted)
    except OSError as exc:
        raise ValueError(f"cannot apply the worker limits through {found.description}: {exc}") from None
