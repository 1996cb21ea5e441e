"""Start a real `tritonpy-server` process on free ports for end-to-end tests.

Every server checks, once it has stopped, that nothing of it outlived it: no worker process (found
by its `--parent-pid` argument, so one orphaned to init is found too) and no shared-memory segment
named after the server's pid. A leftover fails the test that stopped the server (or, for a module-
or session-scoped server, that fixture's teardown). A server stopped with SIGKILL cannot unlink its
segments (the next start sweeps them), so only its processes are checked.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from support import leaks
from support.leaks import SHM_DIR, describe_and_kill, free_port, unlink_segments

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, repo: str | Path, *extra: str, wait_ready: bool = True, check_leaks: bool = True) -> None:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.http_port, self.grpc_port, self.metrics_port = sorted(ports)
        self.repo = str(repo)
        self.args = [
            sys.executable, "-m", "tritonpy.frontends.cli",
            "--model-repository", self.repo,
            "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), *extra,
        ]
        # Everything the server leaves in the temp folder (its log, runtime and socket folders)
        # goes into one folder of its own, removed at stop; the log is kept in memory then.
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"tritonpy-test-{self.http_port}-"))
        self.log_path = self.temp_dir / "server.log"
        self._log = open(self.log_path, "wb")
        self._text: str | None = None
        env = dict(os.environ, TMPDIR=str(self.temp_dir))
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready = wait_ready
        self.check_leaks = check_leaks
        self._checked = False
        self._descendants: dict[int, float] = {}  # pid -> create time, seen while the server ran

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        if self._text is not None:
            return self._text
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 60.0) -> "ServerProcess":
        path = "/v2/health/ready" if self.wait_ready else "/v2/health/live"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()  # clean up its folder; the output stays readable
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=1) as r:
                    if r.status == 200:
                        self._remember_descendants()
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop(check=False)  # the timeout is the failure to report
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0, *, check: bool | None = None) -> int:
        """Stop the server (if it still runs) and check that nothing of it outlived it.

        `check=False` cleans leftovers up without failing; by default the constructor's
        `check_leaks` decides. The check runs once, however often `stop` is called.
        """
        if self.proc.poll() is None:
            self._remember_descendants()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._text is None:
            self._text = self.log_path.read_text(errors="replace")
        try:
            if not self._checked:
                self._checked = True
                self._check_leftovers(self.check_leaks if check is None else check)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return self.proc.returncode

    # -- leftovers ------------------------------------------------------------------------

    def _remember_descendants(self) -> None:
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self._descendants[child.pid] = child.create_time()
        except psutil.Error:
            pass

    def _leftover_processes(self) -> set[int]:
        """Live processes this server started: seen as its descendants, or workers naming it parent."""
        left = set()
        for pid, created in self._descendants.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.add(pid)
            except psutil.Error:
                pass
        marker = ["--parent-pid", str(self.proc.pid)]
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(cmdline[i:i + 2] == marker for i in range(len(cmdline) - 1)):
                left.add(proc.pid)
        return left

    def _leftover_segments(self) -> set[str]:
        prefix = f"tritonpy_{self.proc.pid}_"
        try:
            return {n for n in os.listdir(SHM_DIR) if n.startswith(prefix)}
        except OSError:
            return set()

    def _check_leftovers(self, fail: bool) -> None:
        """Wait up to `leaks.SETTLE_S` for the server's processes to go, then look at its segments; kill and
        unlink what is left."""
        deadline = time.monotonic() + leaks.SETTLE_S
        while True:
            kids = self._leftover_processes()
            if not kids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        described = describe_and_kill(kids)
        # With no process of the server left, nothing will unlink more of its segments: look once,
        # now, before another server starting on this machine sweeps the dead pid's leftovers.
        # A SIGKILLed server could not unlink anything; the next start sweeps it (a tested feature).
        killed = self.proc.returncode == -signal.SIGKILL
        segments = set() if killed else self._leftover_segments()
        unlink_segments(segments)
        if fail:
            assert not kids, f"processes outlived the server (pid {self.proc.pid}): {described}"
            assert not segments, f"shared memory outlived the server (pid {self.proc.pid}): {sorted(segments)}"

    def __enter__(self) -> "ServerProcess":
        return self.wait()

    def __exit__(self, exc_type, *exc) -> None:
        # A test that already failed keeps its own error; leftovers are still cleaned up.
        self.stop(check=None if exc_type is None else False)
