"""The model manager's view of ensembles: which models an ensemble needs, and which need a model.

Triton keeps a dependency graph between ensembles and their composing models. We derive it on
demand from what is loaded (a serving ensemble knows its steps) and from the configurations on
disk (for cycle checks before anything loads), which keeps the manager free of graph bookkeeping:

* Loading an ensemble first makes sure each composing model is loaded: in explicit mode it loads
  the ones that are not (they are then "implicit": loaded along with the ensemble); at start-up in
  none/poll mode it waits for the composing model's own load. Ensembles that (through other
  ensembles) depend on themselves are refused before any lock is taken, so loads cannot deadlock.
* Unloading a model also unloads the serving ensembles that use it (they could not serve any more);
  with `unload_dependents`, the implicit composing models of what is unloaded go too, unless another
  serving ensemble still uses them.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from tritonpy.core.repository.autocomplete import ENSEMBLE_PLATFORM
from tritonpy.core.errors import ServerError, invalid
from tritonpy.proto import model_config_pb2 as mc

if TYPE_CHECKING:
    from tritonpy.core.repository.manager import ModelEntry, ModelManager

__all__ = ["check_cycles", "composing_of", "ensembles_using", "implicit_composing", "prepare_ensemble"]

log = logging.getLogger("tritonpy.core.ensemble.deps")


def _steps_models(config: mc.ModelConfig) -> list[str]:
    return list(dict.fromkeys(s.model_name for s in config.ensemble_scheduling.step))


def composing_of(entry: "ModelEntry") -> set[str]:
    """The composing models of the serving versions of `entry` (empty unless it is an ensemble)."""
    names: set[str] = set()
    for mv in entry.versions.values():
        if mv.serving and mv.config.platform == ENSEMBLE_PLATFORM:
            names.update(_steps_models(mv.config))
    return names


def ensembles_using(entries: dict[str, "ModelEntry"], names: set[str]) -> list["ModelEntry"]:
    """Serving ensembles outside `names` that use any of `names`, directly or through other ensembles."""
    found: dict[str, "ModelEntry"] = {}
    frontier = set(names)
    while frontier:
        nxt: set[str] = set()
        for entry in entries.values():
            if entry.name in names or entry.name in found:
                continue
            if composing_of(entry) & frontier:
                found[entry.name] = entry
                nxt.add(entry.name)
        frontier = nxt
    return list(found.values())


def implicit_composing(entries: dict[str, "ModelEntry"], name: str) -> list["ModelEntry"]:
    """Composing models loaded along with `name` (not explicitly), transitively, that no other
    serving ensemble still uses once `name` and they are gone."""
    going = {name}
    result: list["ModelEntry"] = []
    stack = [name]
    while stack:
        current = entries.get(stack.pop())
        if current is None:
            continue
        for dep in sorted(composing_of(current)):
            entry = entries.get(dep)
            if dep in going or entry is None or entry.explicit:
                continue
            users = {e.name for e in entries.values() if dep in composing_of(e)} - going
            if users:
                continue
            going.add(dep)
            result.append(entry)
            stack.append(dep)
    return result


def check_cycles(name: str, config: mc.ModelConfig, read_config: Callable[[str], mc.ModelConfig | None]) -> None:
    """Refuse an ensemble that reaches itself through the ensembles it uses."""
    path = [name]
    clean: set[str] = set()

    def visit(models: list[str]) -> None:
        for dep in models:
            if dep in path:
                cycle = " -> ".join(path[path.index(dep):] + [dep])
                raise invalid(f"circular dependency between ensembles: {cycle}")
            if dep in clean:
                continue
            dep_config = read_config(dep)
            if dep_config is not None and dep_config.platform == ENSEMBLE_PLATFORM:
                path.append(dep)
                visit(_steps_models(dep_config))
                path.pop()
            clean.add(dep)

    visit(_steps_models(config))


async def prepare_ensemble(manager: "ModelManager", entry: "ModelEntry", config: mc.ModelConfig) -> None:
    """Make every composing model of the ensemble `entry` serve (loading it if needed) before the
    ensemble itself loads; raise INVALID_ARG naming the composing model that is missing or broken."""
    name = entry.name
    prefix = f"load failed for model '{name}': "
    try:
        check_cycles(name, config, manager.read_config)
    except ServerError as exc:
        raise invalid(prefix + exc.message) from None
    deps = _steps_models(config)
    missing = [d for d in deps if d not in manager.entries or (
        manager.entries[d].source is None and not manager.entries[d].serving())]
    if missing:
        raise invalid(prefix + f"ensemble '{name}' contains models that are not available: {', '.join(missing)}")
    results = await asyncio.gather(*(_ensure_serving(manager, name, d) for d in deps), return_exceptions=True)
    for result in results:
        if isinstance(result, ServerError):
            raise invalid(prefix + result.message) from None
        if isinstance(result, BaseException):
            raise result
    for step in config.ensemble_scheduling.step:
        if step.model_version > 0:
            mv = manager.entries[step.model_name].versions.get(int(step.model_version))
            if mv is None or not mv.serving:
                raise invalid(
                    prefix + f"ensemble '{name}' depends on '{step.model_name}' whose required version "
                    f"{step.model_version} is not loaded"
                )


async def _ensure_serving(manager: "ModelManager", ensemble: str, dep: str) -> None:
    entry = manager.entries[dep]
    explicit_mode = manager.options.model_control_mode == "explicit"
    if not explicit_mode and entry.lock.locked():
        async with entry.lock:  # its own start-up load is in progress: wait for it
            pass
    if entry.serving():
        return
    if not explicit_mode and entry.loaded_once:
        reason = entry.reason or "it failed to load"
        raise invalid(f"ensemble '{ensemble}' depends on '{dep}' which is not valid: {reason}")
    log.info("loading model '%s' for ensemble '%s'", dep, ensemble)
    try:
        await manager.load_dependency(dep)
    except ServerError as exc:
        raise invalid(f"ensemble '{ensemble}' depends on '{dep}' which is not valid: {exc.message}") from None
    if not entry.serving():
        raise invalid(f"ensemble '{ensemble}' depends on '{dep}' which has no loaded version")
