"""The model repository manager: which models and versions are loaded, loading, unloading or broken."""
from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from pathlib import Path

from tritonpy.core import config as config_mod
from tritonpy.core.errors import ServerError, invalid, not_found, unavailable
from tritonpy.core.model import ModelState, ModelVersion
from tritonpy.core.options import ServerOptions
from tritonpy.core.repository import ModelSource, scan_repositories, select_versions

log = logging.getLogger("tritonpy.core.manager")


class ModelEntry:
    """Everything known about one model name: its source, loaded versions, or why it is broken."""

    __slots__ = ("name", "source", "versions", "reason", "lock", "loaded_once")

    def __init__(self, name: str, source: ModelSource | None) -> None:
        self.name = name
        self.source = source
        self.versions: dict[int, ModelVersion] = {}
        self.reason = ""  # a model-level failure (bad config, duplicate name) when no version exists
        self.lock = asyncio.Lock()
        self.loaded_once = False

    def ready_versions(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.serving)


class ModelManager:
    def __init__(self, options: ServerOptions, *, runtime_dir: str, resolve_shm=None) -> None:
        self.options = options
        self.runtime_dir = runtime_dir
        self.resolve_shm = resolve_shm
        self.entries: dict[str, ModelEntry] = {}
        self._override_ids = itertools.count()

    # --- discovery ---------------------------------------------------------------------------
    def rescan(self) -> None:
        sources, duplicates = scan_repositories(self.options.model_repositories)
        for name, source in sources.items():
            entry = self.entries.get(name)
            if entry is None:
                self.entries[name] = ModelEntry(name, source)
            elif not entry.versions:
                entry.source = source
        for name, reason in duplicates.items():
            entry = self.entries.setdefault(name, ModelEntry(name, None))
            entry.source = None
            entry.reason = reason

    async def startup(self) -> list[tuple[str, str]]:
        """Load what the control mode says to load; returns (model, reason) for each failure."""
        self.rescan()
        mode = self.options.model_control_mode
        if mode == "explicit":
            wanted = self.options.load_models
            names = sorted(self.entries) if "*" in wanted else wanted
        else:
            names = sorted(self.entries)
        failures = []
        results = await asyncio.gather(*(self._load_named(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                reason = result.message if isinstance(result, ServerError) else repr(result)
                failures.append((name, reason))
        return failures

    async def _load_named(self, name: str, parameters: dict | None = None) -> None:
        entry = self.entries.get(name)
        if entry is None:
            self.rescan()
            entry = self.entries.get(name)
        if entry is None:
            raise invalid(f"failed to load '{name}', failed to poll from model repository")
        async with entry.lock:
            await self._load_entry(entry, parameters or {})

    async def _load_entry(self, entry: ModelEntry, parameters: dict) -> None:
        source = entry.source
        if source is None:
            raise invalid(f"failed to load '{entry.name}': {entry.reason or 'not found in any model repository'}")
        config_text = parameters.get("config")
        files = {k: v for k, v in parameters.items() if k.startswith("file:")}
        if files and not config_text:
            raise invalid(f"failed to load '{entry.name}': file overrides require a 'config' parameter")
        if files:
            source = self._materialise_override(source, files)
        try:
            if config_text is not None:
                if not isinstance(config_text, str):
                    raise invalid(f"failed to load '{entry.name}': 'config' must be a JSON string")
                config = config_mod.config_from_json(config_text)
                if not config.name:
                    config.name = entry.name
                config = config_mod.resolve_backend(config, source)
            else:
                config = config_mod.load_config(
                    source, config_name=self.options.model_config_name, autocomplete=self.options.autocomplete
                )
            config = config_mod.finalize_config(
                config, default_max_batch_size=self.options.default_max_batch_size,
                autocomplete=self.options.autocomplete,
            )
            if config.name != entry.name:
                raise invalid(
                    f"failed to load '{entry.name}': model name '{config.name}' in its configuration does not match "
                    f"the directory name"
                )
            versions = select_versions(config, sorted(source.version_dirs))
        except ServerError as exc:
            entry.reason = exc.message
            if not entry.versions:
                entry.loaded_once = True
            raise
        entry.reason = ""
        entry.loaded_once = True
        new: dict[int, ModelVersion] = {}
        for v in versions:
            new[v] = ModelVersion(
                source=source, version=v, config=_copy(config), options=self.options,
                runtime_dir=self.runtime_dir, resolve_shm=self.resolve_shm,
            )
        results = await asyncio.gather(*(mv.load() for mv in new.values()), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        old = entry.versions
        if failed and old and any(mv.serving for mv in old.values()):
            # a failed reload keeps the old versions serving
            for mv in new.values():
                await mv.unload(timeout=1.0)
            first = failed[0]
            raise first if isinstance(first, ServerError) else unavailable(str(first))
        entry.versions = new
        for v, mv in old.items():
            if v not in new or new[v] is not mv:
                await mv.unload(timeout=self.options.exit_timeout_secs)
        for mv in new.values():
            log.info("model '%s' version %d: %s %s", entry.name, mv.version, mv.state.value, mv.reason)
        if failed:
            first = failed[0]
            raise first if isinstance(first, ServerError) else unavailable(str(first))

    def _materialise_override(self, source: ModelSource, files: dict) -> ModelSource:
        root = Path(self.runtime_dir) / "overrides" / f"{source.name}_{next(self._override_ids)}"
        model_dir = root / source.name
        model_dir.mkdir(parents=True, exist_ok=True)
        for key, content in files.items():
            rel = key[len("file:"):]
            target = (model_dir / rel).resolve()
            if not rel or model_dir.resolve() not in target.parents:
                raise invalid(f"failed to load '{source.name}': override file path '{rel}' is not inside the model")
            if not isinstance(content, (bytes, bytearray)):
                raise invalid(f"failed to load '{source.name}': override '{key}' must be file content bytes")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(content))
        sources, _ = scan_repositories([str(root)])
        return sources[source.name]

    # --- explicit control API ----------------------------------------------------------------
    def _check_explicit(self) -> None:
        if self.options.model_control_mode != "explicit":
            raise unavailable("explicit model load / unload is not allowed if polling is enabled")

    async def load(self, name: str, parameters: dict | None = None) -> None:
        self._check_explicit()
        await self._load_named(name, parameters)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        self._check_explicit()
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise invalid(f"failed to unload '{name}', Model to be unloaded has not been served")
        async with entry.lock:
            versions = list(entry.versions.values())
            await asyncio.gather(*(mv.unload(timeout=self.options.exit_timeout_secs) for mv in versions))

    # --- lookup ------------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        """The serving version for a request, or Triton's errors for unknown / not-ready models."""
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if version:
            try:
                v = int(version)
            except ValueError:
                raise invalid(f"failed to parse model version '{version}' for '{name}'") from None
            mv = entry.versions.get(v)
            if mv is None:
                raise not_found(f"Request for unknown model: '{name}' version {version} is not found")
            if not mv.serving:
                raise unavailable(f"Request for unknown model: '{name}' version {version} is not at ready state")
            return mv
        ready = entry.ready_versions()
        if not ready:
            raise not_found(f"Request for unknown model: '{name}' has no available versions")
        return entry.versions[ready[-1]]

    def find(self, name: str, version: str = "") -> ModelVersion | None:
        try:
            return self.get(name, version)
        except ServerError:
            return None

    def all_versions(self) -> list[ModelVersion]:
        return [mv for e in self.entries.values() for mv in e.versions.values()]

    def index(self, ready_only: bool = False) -> list[dict]:
        self.rescan()
        rows = []
        for name in sorted(self.entries):
            entry = self.entries[name]
            if not entry.versions:
                if ready_only:
                    continue
                if entry.reason:
                    rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": entry.reason})
                else:
                    rows.append({"name": name})
                continue
            for v in sorted(entry.versions):
                mv = entry.versions[v]
                if ready_only and not mv.serving:
                    continue
                rows.append({"name": name, "version": str(v), "state": mv.state.value, "reason": mv.reason})
        return rows

    def all_ready(self) -> bool:
        """Strict readiness: every model version that was asked to load is serving with a live instance."""
        for entry in self.entries.values():
            if entry.reason and entry.loaded_once and not entry.versions:
                return False
            for mv in entry.versions.values():
                if mv.state == ModelState.UNAVAILABLE and mv.reason == "unloaded":
                    continue
                if not mv.instances_alive():
                    return False
        return True

    async def shutdown(self, timeout: float) -> None:
        versions = self.all_versions()
        await asyncio.gather(*(mv.unload(timeout=timeout) for mv in versions), return_exceptions=True)
        overrides = Path(self.runtime_dir) / "overrides"
        if overrides.exists():
            shutil.rmtree(overrides, ignore_errors=True)


def _copy(config):
    clone = type(config)()
    clone.CopyFrom(config)
    return clone


__all__ = ["ModelManager", "ModelEntry"]
