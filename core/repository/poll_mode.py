"""Poll mode (`--model-control-mode=poll`): apply what changed in the repository since the last look.

New models load, removed ones unload (their ensembles first), changed ones reload through the
manager's usual plan (keep / resize / load next to and swap). An ensemble unloaded because a
composing model went away is remembered and loaded again once all its models serve.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tritonpy.core.ensemble import deps as ensemble_deps
from tritonpy.core.errors import ServerError
from tritonpy.core.repository.poller import model_fingerprints

if TYPE_CHECKING:
    from tritonpy.core.repository.manager import ModelEntry, ModelManager

log = logging.getLogger("tritonpy.core.repository.manager")


class PollMode:
    """One pass of the repository poller against a `ModelManager`."""

    __slots__ = ("_manager", "_orphaned")

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self._orphaned: set[str] = set()  # ensembles unloaded because a composing model went

    async def poll_once(self) -> None:
        """Apply repository changes: new models load, removed ones unload, changed ones reload."""
        manager = self._manager
        sources = manager.rescan()
        jobs = []
        for name, entry in list(manager.entries.items()):
            if name not in sources:
                if entry.versions and name not in manager.duplicates:
                    jobs.append(self._removed(entry))
                continue
            source = sources[name]
            if entry.prints is None or entry.prints != model_fingerprints(source.path, dict(source.version_dirs)):
                jobs.append(self._load(entry))
        if jobs:
            await asyncio.gather(*jobs)
        await self._reload_orphaned()

    async def _reload_orphaned(self) -> None:
        """Reload the ensembles that lost a composing model once all their models serve again."""
        manager = self._manager
        for name in sorted(self._orphaned):
            entry = manager.entries.get(name)
            config = manager.read_config(name)
            if entry is None or entry.source is None or config is None:
                self._orphaned.discard(name)
                continue
            steps = {s.model_name for s in config.ensemble_scheduling.step}
            if all(manager.entries.get(d) is not None and manager.entries[d].serving() for d in steps):
                self._orphaned.discard(name)
                await self._load(entry)

    async def _load(self, entry: ModelEntry) -> None:
        try:
            async with entry.lock:
                if self._manager.closing:
                    return
                await self._manager.load_entry(entry, {})
        except ServerError as exc:
            log.error("poll: failed to load '%s': %s", entry.name, exc.message)

    async def _removed(self, entry: ModelEntry) -> None:
        manager = self._manager
        log.info("poll: model '%s' was removed from the repository; unloading it", entry.name)
        # Ensembles that use it cannot serve without it: they go first, as an unload does. They are
        # tried again on the next poll (the model may be back by then).
        users = ensemble_deps.ensembles_using(manager.entries, {entry.name})
        for user in users:
            log.info("poll: unloading ensemble '%s': it uses model '%s', which was removed", user.name, entry.name)
            self._orphaned.add(user.name)
        await asyncio.gather(*(manager.unload_entry(e) for e in users))
        await manager.unload_entry(entry)
        async with entry.lock:
            if entry.source is None and manager.entries.get(entry.name) is entry:
                del manager.entries[entry.name]


__all__ = ["PollMode"]
