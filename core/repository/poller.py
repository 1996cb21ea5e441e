"""Poll mode: rescan the model repositories every `--repository-poll-secs` and apply what changed.

Change detection is by file fingerprints (relative path, size, modification time in ns) so a poll
costs a directory walk, not a read of every model file. The manager decides what a change means
(new model -> load, gone -> unload, changed -> reload keeping what did not change); this module
only owns the timing task and the fingerprints.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger("tritonpy.core.repository.poller")

__all__ = ["Fingerprint", "tree_fingerprint", "model_fingerprints", "RepositoryPoller"]

# A sorted tuple of (relative path, size, mtime_ns) for every file under a directory.
Fingerprint = tuple[tuple[str, int, int], ...]


def tree_fingerprint(root: Path, *, skip: frozenset[str] = frozenset()) -> Fingerprint:
    """Files under `root` (recursively), minus top-level entries named in `skip`.

    `__pycache__` folders are ignored: the Python backend writes them while loading, and they
    must not look like a change on the next poll.
    """
    items: list[tuple[str, int, int]] = []
    try:
        top = list(os.scandir(root))
    except OSError:
        return ()
    stack = [(entry, entry.name) for entry in top if entry.name not in skip]
    while stack:
        entry, rel = stack.pop()
        try:
            if entry.is_dir(follow_symlinks=True):
                if entry.name == "__pycache__":
                    continue
                stack.extend((child, f"{rel}/{child.name}") for child in os.scandir(entry.path))
            else:
                st = entry.stat(follow_symlinks=True)
                items.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            continue  # vanished while walking: the next poll sees the settled state
    return tuple(sorted(items))


def model_fingerprints(model_dir: Path, versions: dict[int, Path]) -> tuple[Fingerprint, dict[int, Fingerprint]]:
    """(files of the model outside its version folders, {version: files of that version folder})."""
    names = frozenset(p.name for p in versions.values())
    return (
        tree_fingerprint(model_dir, skip=names),
        {v: tree_fingerprint(p) for v, p in versions.items()},
    )


class RepositoryPoller:
    """Calls `poll_once()` every `interval` seconds until stopped; a failing poll is logged only."""

    def __init__(self, poll_once: Callable[[], Awaitable[None]], interval: float) -> None:
        self._poll_once = poll_once
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.polls = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tritonpy-repository-poller")

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self._poll_once()
            except Exception:
                log.exception("polling the model repository failed")
            self.polls += 1

    async def stop(self) -> None:
        """Stop polling. A poll in progress finishes first: cancelling a load half-way could
        leave worker processes behind, and loads are bounded by their own timeouts."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        await task
