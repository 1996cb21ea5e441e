"""Leak probes (shared memory, child processes) and free ports, shared by fixtures and helpers."""
from __future__ import annotations

import os
import socket
import time

import psutil

SHM_DIR = "/dev/shm"
# How long a check gives cleanup (workers exiting, segments unlinked) before calling it a leak.
SETTLE_S = 10.0
OUR_SHM_PREFIXES = ("tritonpy", "tp_")


def _foreign(name: str) -> bool:
    """A server segment (`tritonpy_<pid>_...`) owned by a live process outside this test run.

    Segments of this process, of its descendants, or of processes that are gone are ours to
    account for; another server running on the same machine is not.
    """
    if not name.startswith("tritonpy_"):
        return False
    pid_text = name[len("tritonpy_"):].split("_", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        return os.getpid() not in {p.pid for p in proc.parents()}
    except psutil.Error:
        return False


def shm_names() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(OUR_SHM_PREFIXES) and not _foreign(n)}
    except OSError:
        return set()


def child_pids() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
    except psutil.Error:
        return set()


def _settle(probe, before: set, timeout: float = 10.0) -> set:
    """New entries that are still there after giving cleanup up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        extra = probe() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def describe_and_kill(pids: set[int]) -> list[str]:
    """'pid (command line)' for each leaked process, which is then killed so later tests start clean."""
    described = []
    for pid in sorted(pids):
        try:
            proc = psutil.Process(pid)
            described.append(f"{pid} ({' '.join(proc.cmdline())[:200]})")
            proc.kill()
        except psutil.Error:
            described.append(str(pid))
    return described


def unlink_segments(names: set[str]) -> None:
    """Remove leaked segments (known to be ours) after they were reported."""
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except OSError:
            pass


def held_elsewhere(names: set[str]) -> set[str]:
    """Of `names`, the segments that a live process outside this test run has mapped or open.

    Another test run on the same machine creates segments with the same prefixes while ours runs
    (tritonclient regions named `tp_...`, say); they are not ours to report. A segment we leaked
    is held by nobody, or by a process of ours. Reads /proc, so it is only asked about suspects.
    """
    if not names:
        return set()
    ours = {os.getpid()} | child_pids()
    wanted = {os.path.join(SHM_DIR, n): n for n in names}
    held: set[str] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in ours:
            held.update(wanted[p] for p in _shm_paths(entry) if p in wanted)
    return held


def _shm_paths(pid: str) -> set[str]:
    """/dev/shm files process `pid` has mapped or open."""
    paths: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                at = line.find(SHM_DIR + "/")
                if at >= 0:
                    paths.add(line[at:].rstrip("\n").removesuffix(" (deleted)"))
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return paths
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(SHM_DIR + "/"):
            paths.add(target)
    return paths


class LeakProbe:
    """Our shared-memory segments and child processes now; `check()` fails on any that are new later.

    Taken before a server starts (or a test runs) and checked after it stopped. Leaked processes
    (descendants of this one) are killed once reported; a leaked segment stays, since a name alone
    cannot prove it is ours, and the next probe's snapshot already holds it, so it fails one check.
    """

    def __init__(self) -> None:
        # tritonclient's shared-memory helpers start multiprocessing's resource tracker, a long-lived
        # helper process of the test runner itself: start it before the snapshot so it is not a "leak".
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        self.shm_before = shm_names()
        self.kids_before = child_pids()

    def check(self, what: str = "", timeout: float | None = None) -> None:
        timeout = SETTLE_S if timeout is None else timeout
        leaked_kids = _settle(child_pids, self.kids_before, timeout)
        others = held_elsewhere(shm_names() - self.shm_before)
        leaked_shm = _settle(shm_names, self.shm_before | others, timeout)
        leaked_shm -= held_elsewhere(leaked_shm)  # made by another run while we waited
        described = describe_and_kill(leaked_kids)
        where = f" by {what}" if what else ""
        assert not leaked_kids, f"child processes leaked{where}: {described}"
        assert not leaked_shm, f"shared memory leaked{where}: {sorted(leaked_shm)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
