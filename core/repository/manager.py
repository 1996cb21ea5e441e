"""The model repository manager: which models and versions are loaded, loading, unloading or broken.

A (re)load is planned per version against what is serving now: a version whose files and
configuration are unchanged is kept as is; one whose configuration differs only in instance
counts is resized in place; anything else is loaded fresh next to the old one and swapped in only
once it is READY, so traffic never sees a gap. A failed reload leaves the old versions serving and
records the reason (shown by the repository index and returned by the load call).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from typing import Any
from pathlib import Path

from tritonpy.core.observability.custom_metrics import CustomMetrics
from tritonpy.core.repository import config as config_mod
from tritonpy.core.ensemble import deps as ensemble_deps
from tritonpy.core.errors import ServerError, invalid, not_found, unavailable
from tritonpy.core.instance.batch_codec import ResolveShm
from tritonpy.core.instance.bls import BlsRouter
from tritonpy.core.model.version import ModelState, ModelVersion, same_except_counts
from tritonpy.core.options import ServerOptions
from tritonpy.core.repository.poll_mode import PollMode
from tritonpy.core.repository.poller import Fingerprint, RepositoryPoller, model_fingerprints
from tritonpy.core.repository.scan import ModelSource, scan_repositories, select_versions
from tritonpy.proto import model_config_pb2 as mc

log = logging.getLogger("tritonpy.core.repository.manager")

POLLING_MESSAGE = "explicit model load / unload is not allowed if polling is enabled"


class ModelEntry:
    """Everything known about one model name: its source, loaded versions, or why it is broken."""

    __slots__ = ("name", "source", "versions", "loading", "reason", "lock", "loaded_once", "prints", "explicit")

    def __init__(self, name: str, source: ModelSource | None) -> None:
        self.name = name
        self.source = source
        self.versions: dict[int, ModelVersion] = {}
        self.loading: dict[int, ModelVersion] = {}  # versions being loaded right now (index shows LOADING)
        # The last load failure: shown alone when no version exists, or next to the versions that
        # kept serving after a failed reload. Cleared by a successful load.
        self.reason = ""
        self.lock = asyncio.Lock()
        self.loaded_once = False
        # Fingerprint of the files the last load attempt saw (poll mode reloads when it changes).
        self.prints: tuple[Fingerprint, dict[int, Fingerprint]] | None = None
        # Loaded because someone asked for it (not only as an ensemble's composing model):
        # `unload_dependents` leaves such models alone.
        self.explicit = False

    def ready_versions(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.serving)

    def serving(self) -> bool:
        return any(mv.serving for mv in self.versions.values())


class ModelManager:
    # long: load planning (keep / resize / load next to and swap), unload and lookup share the entries
    # and their locks; poll mode, the index rows and the requested config already live beside it.
    def __init__(
        self, options: ServerOptions, *, runtime_dir: str, resolve_shm: ResolveShm | None = None,
        bls_router: BlsRouter | None = None, custom_metrics: CustomMetrics | None = None,
    ) -> None:
        self.options = options
        self.runtime_dir = runtime_dir
        self.resolve_shm = resolve_shm
        self.bls_router = bls_router  # handed to every model version's instances
        self.custom_metrics = custom_metrics  # likewise
        self.entries: dict[str, ModelEntry] = {}
        self._override_ids = itertools.count()
        self.poller: RepositoryPoller | None = None
        self.duplicates: set[str] = set()
        self.closing = False

    # --- discovery ---------------------------------------------------------------------------
    def rescan(self) -> dict[str, ModelSource]:
        """Refresh every entry's view of the disk; forget never-served models whose folder went away."""
        sources, duplicates = scan_repositories(self.options.model_repositories)
        for name, source in sources.items():
            entry = self.entries.get(name)
            if entry is None:
                self.entries[name] = ModelEntry(name, source)
            else:
                entry.source = source
        for name, reason in duplicates.items():
            entry = self.entries.setdefault(name, ModelEntry(name, None))
            entry.source = None
            entry.reason = reason
        self.duplicates = set(duplicates)
        for name in [n for n, e in self.entries.items() if n not in sources and n not in duplicates]:
            entry = self.entries[name]
            if not entry.versions and not entry.loading and not entry.lock.locked():
                del self.entries[name]
            else:
                entry.source = None
        return sources

    async def startup(self) -> list[tuple[str, str]]:
        """Load what the control mode says to load; returns (model, reason) for each failure."""
        self.rescan()
        mode = self.options.model_control_mode
        if mode == "explicit":
            wanted = self.options.load_models
            names = sorted(self.entries) if "*" in wanted else list(dict.fromkeys(wanted))
        else:
            names = sorted(self.entries)
        failures = []
        results = await asyncio.gather(*(self._load_named(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                reason = result.message if isinstance(result, ServerError) else repr(result)
                failures.append((name, reason))
        if mode == "poll" and self.options.repository_poll_secs > 0:
            self.poller = RepositoryPoller(PollMode(self).poll_once, float(self.options.repository_poll_secs))
            self.poller.start()
        return failures

    async def _load_named(self, name: str, parameters: dict[str, Any] | None = None, *, explicit: bool = True) -> None:
        if self.closing:
            raise unavailable("Server is exiting")
        self.rescan()
        entry = self.entries.get(name)
        if entry is None:
            raise invalid(f"failed to load '{name}', failed to poll from model repository")
        if explicit:
            entry.explicit = True
        async with entry.lock:
            if self.closing:
                raise unavailable("Server is exiting")
            await self.load_entry(entry, parameters or {})

    # --- (re)loading -------------------------------------------------------------------------
    async def load_entry(self, entry: ModelEntry, parameters: dict[str, Any]) -> None:
        source = entry.source
        if source is None:
            raise invalid(f"failed to load '{entry.name}': {entry.reason or 'not found in any model repository'}")
        files = {k: v for k, v in parameters.items() if k.startswith("file:")}
        try:
            if files and not parameters.get("config"):
                raise invalid(f"failed to load '{entry.name}': file overrides require a 'config' parameter")
            prints = model_fingerprints(source.path, dict(source.version_dirs))
            entry.prints = prints
            if files:
                source = self._materialise_override(source, files)
                prints = model_fingerprints(source.path, dict(source.version_dirs))
            config = requested_config(self.options, entry, source, parameters)
            versions = select_versions(config, sorted(source.version_dirs))
            if config.platform == config_mod.ENSEMBLE_PLATFORM:
                await ensemble_deps.prepare_ensemble(self, entry, config)
        except ServerError as exc:
            self._record_failure(entry, exc.message)
            raise _prefixed_load_failure(entry.name, exc) from exc
        entry.loaded_once = True
        await self._apply(entry, source, config, versions, prints)

    async def _apply(
        self, entry: ModelEntry, source: ModelSource, config: mc.ModelConfig, versions: list[int],
        prints: tuple[Fingerprint, dict[int, Fingerprint]],
    ) -> None:
        """Keep, resize or load each wanted version; swap in only when every change succeeded."""
        model_print, version_prints = prints
        keep: dict[int, ModelVersion] = {}
        resize: dict[int, ModelVersion] = {}
        fresh: dict[int, ModelVersion] = {}
        for v in versions:
            old = entry.versions.get(v)
            if (
                old is not None and old.serving and old.source.path == source.path
                and old.model_print == model_print and old.version_print == version_prints.get(v)
            ):
                if old.requested == config:
                    keep[v] = old
                    continue
                if same_except_counts(old.requested, config):
                    resize[v] = old
                    continue
            mv = ModelVersion(
                source=source, version=v, config=_copy(config), options=self.options,
                runtime_dir=self.runtime_dir, resolve_shm=self.resolve_shm, bls_router=self.bls_router,
                custom_metrics=self.custom_metrics, resolve_model=self.get,
            )
            mv.requested = _copy(config)
            mv.model_print = model_print
            mv.version_print = version_prints.get(v, ())
            fresh[v] = mv
        entry.loading.update(fresh)
        try:
            jobs = [mv.load() for mv in fresh.values()] + [mv.resize(config) for mv in resize.values()]
            results = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            for v, mv in fresh.items():
                if entry.loading.get(v) is mv:
                    del entry.loading[v]
        failed = _load_failure(entry.name, list(fresh) + list(resize), results)
        if failed is not None and entry.serving():
            # a failed reload keeps the old versions serving
            await asyncio.gather(*(mv.unload(timeout=1.0) for mv in fresh.values()), return_exceptions=True)
            self._record_failure(entry, failed.message)
            log.warning("reload of model '%s' failed; the old version(s) keep serving: %s", entry.name, failed.message)
            raise failed
        previous = entry.versions
        entry.versions = {**keep, **resize, **fresh}
        entry.reason = failed.message if failed is not None else ""
        for v, mv in previous.items():
            if entry.versions.get(v) is not mv:
                await mv.unload(timeout=self.options.exit_timeout_secs)
        for v in sorted(fresh):
            mv = fresh[v]
            log.info("model '%s' version %d: %s %s", entry.name, v, mv.state.value, mv.reason)
        if failed is not None:
            raise failed

    def _record_failure(self, entry: ModelEntry, message: str) -> None:
        entry.reason = message
        entry.loaded_once = True

    def _materialise_override(self, source: ModelSource, files: dict[str, Any]) -> ModelSource:
        root = Path(self.runtime_dir) / "overrides" / f"{source.name}_{next(self._override_ids)}"
        model_dir = root / source.name
        model_dir.mkdir(parents=True, exist_ok=True)
        for key, content in files.items():
            rel = key[len("file:"):]
            if "\0" in rel:  # the filesystem would raise ValueError: a client mistake, not a 500
                raise invalid(f"failed to load '{source.name}': override file path {rel!r} contains a NUL byte")
            target = (model_dir / rel).resolve()
            if not rel or model_dir.resolve() not in target.parents:
                raise invalid(f"failed to load '{source.name}': override file path '{rel}' is not inside the model")
            if not isinstance(content, (bytes, bytearray)):
                raise invalid(f"failed to load '{source.name}': override '{key}' must be file content bytes")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(bytes(content))
            except OSError as exc:  # e.g. 'file:1' and 'file:1/model.onnx' in one request
                raise invalid(
                    f"failed to load '{source.name}': cannot write override '{rel}': {exc.strerror}"
                ) from None
        sources, _ = scan_repositories([str(root)])
        return sources[source.name]

    # --- ensembles ---------------------------------------------------------------------------
    async def load_dependency(self, name: str) -> None:
        """Load a composing model on behalf of an ensemble (it stays 'implicit')."""
        await self._load_named(name, explicit=False)

    def read_config(self, name: str) -> mc.ModelConfig | None:
        """The configuration a load of `name` would use now (else the serving one), or None."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        if entry.source is not None:
            try:
                return requested_config(self.options, entry, entry.source, {})
            except ServerError:
                pass
        serving = [mv for mv in entry.versions.values() if mv.serving]
        return serving[-1].config if serving else None

    # --- explicit control API ----------------------------------------------------------------
    def _check_explicit(self) -> None:
        if self.options.model_control_mode != "explicit":
            raise unavailable(POLLING_MESSAGE)

    async def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        self._check_explicit()
        await self._load_named(name, parameters)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Refuse new requests at once, let queued and in-flight ones finish, stop the workers.

        Serving ensembles that use the model are unloaded first (they could not serve without it).
        With `unload_dependents`, the composing models loaded along with this one (not explicitly)
        are unloaded after it, unless another serving ensemble still uses them.
        """
        self._check_explicit()
        entry = self.entries.get(name)
        if entry is None or not (entry.versions or entry.loading or entry.loaded_once):
            raise invalid(f"failed to unload '{name}', Model to be unloaded has not been served")
        along = ensemble_deps.implicit_composing(self.entries, name) if unload_dependents else []
        users = ensemble_deps.ensembles_using(self.entries, {name, *(e.name for e in along)})
        for user in users:
            log.info("unloading ensemble '%s': it uses model '%s', which is being unloaded", user.name, name)
        await asyncio.gather(*(self.unload_entry(e) for e in users))
        await self.unload_entry(entry)
        for dep in along:
            log.info("unloading model '%s', loaded along with '%s'", dep.name, name)
        await asyncio.gather(*(self.unload_entry(e) for e in along))

    async def unload_entry(self, entry: ModelEntry) -> None:
        entry.explicit = False
        for mv in entry.versions.values():
            mv.begin_unload()  # refuse new requests before waiting for the lock
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
                raise invalid(f"failed to get model version from specified version string '{version}'") from None
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

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model in the repositories: one row per known version, or a bare row if never loaded."""
        self.rescan()
        return index_rows(self.entries, ready_only)

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
        """Stop polling, refuse new loads and requests, let loads in progress finish, drain and stop
        every version (each within `timeout`), and remove the override directories."""
        self.closing = True
        if self.poller is not None:
            await self.poller.stop()
            self.poller = None
        for mv in self.all_versions():
            mv.begin_unload()

        async def close(entry: ModelEntry) -> None:
            async with entry.lock:  # a load in progress finishes (and is then unloaded) first
                versions = list(entry.versions.values())
                await asyncio.gather(*(mv.unload(timeout=timeout) for mv in versions), return_exceptions=True)

        await asyncio.gather(*(close(e) for e in list(self.entries.values())), return_exceptions=True)
        overrides = Path(self.runtime_dir) / "overrides"
        if overrides.exists():
            shutil.rmtree(overrides, ignore_errors=True)


def requested_config(
    options: ServerOptions, entry: ModelEntry, source: ModelSource, parameters: dict[str, Any]
) -> mc.ModelConfig:
    """The configuration a load asks for (override or config.pbtxt), finalized, not yet backend-completed."""
    config_text = parameters.get("config")
    if config_text is not None:
        if not isinstance(config_text, str):
            raise invalid(f"failed to load '{entry.name}': 'config' must be a JSON string")
        config = config_mod.config_from_json(config_text, model=entry.name)
        if not config.name:
            config.name = entry.name
        config = config_mod.resolve_backend(config, source)
    else:
        config = config_mod.load_config(
            source, config_name=options.model_config_name, autocomplete=options.autocomplete
        )
    config = config_mod.finalize_config(
        config, default_max_batch_size=options.default_max_batch_size,
        autocomplete=options.autocomplete,
    )
    if config.name != entry.name:
        raise invalid(
            f"failed to load '{entry.name}': model name '{config.name}' in its configuration does not match "
            f"the directory name"
        )
    return config


def index_rows(entries: dict[str, ModelEntry], ready_only: bool) -> list[dict[str, str]]:
    """The repository index (Triton's rows): one per known version, or a bare row if never loaded."""
    rows: list[dict[str, str]] = []
    for name in sorted(entries):
        entry = entries[name]
        shown: dict[int, ModelVersion] = dict(entry.versions)
        for v, mv in entry.loading.items():
            if v not in shown or not shown[v].serving:
                shown[v] = mv
        if not shown:
            if ready_only:
                continue
            if entry.reason:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": entry.reason})
            else:
                rows.append({"name": name})
            continue
        for v in sorted(shown):
            mv = shown[v]
            if ready_only and not mv.serving:
                continue
            reason = mv.reason or (entry.reason if mv.serving else "")
            rows.append({"name": name, "version": str(v), "state": mv.state.value, "reason": reason})
    return rows


def _load_failure(name: str, versions: list[int], results: list[BaseException | None]) -> ServerError | None:
    """Triton's load error (INVALID_ARG, HTTP 400): one line per failed version with its reason."""
    lines = []
    for v, result in zip(versions, results):
        if isinstance(result, BaseException):
            reason = result.message if isinstance(result, ServerError) else f"{type(result).__name__}: {result}"
            lines.append(f"version {v} is at UNAVAILABLE state: {reason};")
    if not lines:
        return None
    return invalid(f"load failed for model '{name}': " + "\n".join(lines))


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    clone = mc.ModelConfig()
    clone.CopyFrom(config)
    return clone



def _prefixed_load_failure(name: str, exc: ServerError) -> ServerError:
    """Triton words every load failure as `failed to load '<model>'...`; clients match on it."""
    if exc.message.startswith("failed to load"):
        return exc
    text = exc.message
    own = f"model '{name}': "
    if text.startswith(own):
        text = text[len(own):]
    return ServerError(exc.code, f"failed to load '{name}': {text}")


__all__ = ["ModelManager", "ModelEntry", "POLLING_MESSAGE"]
