"""Start a real `tritonpy-server` process on free ports for end-to-end tests."""
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

from support.leaks import free_port

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, repo: str | Path, *extra: str, wait_ready: bool = True) -> None:
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
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._text is None:
            self._text = self.log_path.read_text(errors="replace")
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
