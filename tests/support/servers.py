"""The server fixture family's building blocks: the example repository and leak-checked servers.

`serve()` is what a module- or session-scoped fixture wraps a server in: a leak probe taken before
the server starts, a clean exit (status 0) required when it stops, and the probe checked after it
(no new child process or shared-memory segment of ours). The fixtures themselves live in
tests/conftest.py: `example_repo`, `example_server`, `start_server` and `resource_tracker`.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Iterator

from support.leaks import LeakProbe
from support.server_process import ROOT, ServerProcess

EXAMPLE_MODELS = ("add_sub", "add_sub_onnx", "densenet_onnx", "string_identity")


@functools.cache
def examples_module() -> ModuleType:
    """examples/build_examples.py, imported once (its model builders and config texts)."""
    spec = importlib.util.spec_from_file_location("build_examples", ROOT / "examples" / "build_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_example_repository(out: Path) -> Path:
    """The quick-start repository (densenet_onnx, add_sub, add_sub_onnx, string_identity) in `out`."""
    examples_module().build(out)
    return out


@contextlib.contextmanager
def serve(repo: str | Path, *flags: str, wait_ready: bool = True) -> Iterator[ServerProcess]:
    """A started server on `repo`; on exit it must stop with status 0 and leave nothing behind."""
    probe = LeakProbe()
    server = ServerProcess(repo, *flags, wait_ready=wait_ready)
    with server:
        yield server
    assert server.proc.returncode == 0, f"server exited with {server.proc.returncode}:\n{server.output()}"
    probe.check(f"the server on {Path(repo).name}")


class ServerStarter:
    """`start_server(repo, *flags)`: servers for one test, all stopped and leak-checked at its end."""

    def __init__(self) -> None:
        self.probe = LeakProbe()
        self.servers: list[ServerProcess] = []

    def __call__(self, repo: str | Path, *flags: str, wait_ready: bool = True, wait: bool = True) -> ServerProcess:
        server = ServerProcess(repo, *flags, wait_ready=wait_ready)
        self.servers.append(server)
        return server.wait() if wait else server

    def close(self) -> None:
        errors: list[AssertionError] = []
        for server in self.servers:  # stop every one even if an earlier one leaked
            try:
                server.stop()
            except AssertionError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        self.probe.check("servers of this test")
