"""The model repository on disk: which models exist, which versions they have, which to serve.

Layout (Triton's): `<repo>/<model>/[config.pbtxt] [configs/<name>.pbtxt] [labels] <version>/<files>`.
Version directories are non-negative integers without leading zeros ("0" itself is allowed);
anything else in a model directory (`configs/`, `.ipynb_checkpoints`, "01") is ignored, with a
warning for directories that look like mistakes. This module only reads the filesystem; loading
is the manager's job.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

from tritonpy.core.repository.autocomplete import ConfigError
from tritonpy.proto import model_config_pb2 as mc

log = logging.getLogger("tritonpy.core.repository.scan")

__all__ = ["ModelSource", "DUPLICATE_REASON", "scan_repositories", "scan_versions", "select_versions", "read_labels"]

# Triton's MODEL_READY_REASON_DUPLICATE.
DUPLICATE_REASON = "model appears in two or more repositories"
# Folders inside a model directory that are not versions and deserve no warning.
_KNOWN_NON_VERSION_DIRS = frozenset({"configs", "warmup", "initial_state", "__pycache__"})


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSource:
    """One model directory found in a repository."""

    name: str
    repository: str  # the repository path it was found in
    path: Path  # <repository>/<name>
    version_dirs: dict[int, Path]  # version number -> its directory


def _is_version_name(name: str) -> bool:
    return name.isascii() and name.isdigit() and (len(name) == 1 or name[0] != "0")


def scan_versions(model_dir: Path) -> dict[int, Path]:
    """Numeric version directories of one model, by number."""
    versions: dict[int, Path] = {}
    try:
        entries = sorted(model_dir.iterdir())
    except OSError as exc:
        log.warning("cannot list model directory %s: %s", model_dir, exc)
        return versions
    for entry in entries:
        if not entry.is_dir():
            continue
        if _is_version_name(entry.name):
            versions[int(entry.name)] = entry
        elif entry.name.startswith(".") or entry.name in _KNOWN_NON_VERSION_DIRS:
            continue
        elif entry.name.isdigit():
            log.warning("ignore version directory '%s' which contains leading zeros in its directory name", entry)
        else:
            log.warning("ignore version directory '%s' which fails to convert to integral number", entry)
    return versions


def scan_repositories(paths: Iterable[str | Path]) -> tuple[dict[str, ModelSource], dict[str, str]]:
    """Every model folder in the given repositories.

    Returns (sources by name, unavailable models by name -> reason). A name found in two or more
    repositories is not served at all (Triton without namespacing): it appears only in the second
    map. A repository path that is not a directory is skipped with a warning.
    """
    found: dict[str, list[ModelSource]] = {}
    for repo in paths:
        repo_path = Path(repo)
        if not repo_path.is_dir():
            log.warning("model repository '%s' is not a directory; skipped", repo)
            continue
        for entry in sorted(repo_path.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            source = ModelSource(
                name=entry.name, repository=str(repo), path=entry, version_dirs=scan_versions(entry)
            )
            found.setdefault(entry.name, []).append(source)
    sources: dict[str, ModelSource] = {}
    unavailable: dict[str, str] = {}
    for name, candidates in found.items():
        if len(candidates) > 1:
            where = ", ".join(c.repository for c in candidates)
            log.error("model '%s' found in several repositories (%s); it will not be served", name, where)
            unavailable[name] = DUPLICATE_REASON
        else:
            sources[name] = candidates[0]
    return sources, unavailable


def select_versions(config: mc.ModelConfig, available: Iterable[int], *, strict: bool = True) -> list[int]:
    """The versions the version policy serves, ascending.

    latest{num_versions: n} takes the n highest (n = 0 is read as 1, the documented default);
    all{} takes every one; specific{versions} takes those listed. A listed version without a
    directory is an error naming it (with `strict=False` it is only logged, as Triton does).
    No version left to serve is an error.
    """
    have = sorted(set(available))
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice") or "latest"
    if choice == "all":
        chosen = have
    elif choice == "specific":
        wanted = sorted(set(policy.specific.versions))
        missing = [v for v in wanted if v not in have]
        if missing:
            text = ", ".join(str(v) for v in missing)
            message = (
                f"model '{config.name}': version_policy: version{'s' if len(missing) > 1 else ''} {text} "
                f"specified but the version directory is not present (available: {have or 'none'})"
            )
            if strict:
                raise ConfigError(message)
            log.error("%s", message)
        chosen = [v for v in wanted if v in have]
    else:
        n = policy.latest.num_versions if policy.HasField("latest") else 1
        chosen = have[-max(n, 1):] if have else []
    if not chosen:
        raise ConfigError(
            f"model '{config.name}': at least one version must be available under the version policy "
            f"(version directories found: {have or 'none'})"
        )
    return chosen


def read_labels(model_dir: str | Path, filename: str) -> list[str]:
    """The lines of a label file in the model directory (for classification outputs)."""
    path = Path(model_dir) / filename
    model = Path(model_dir).name
    if Path(filename).name != filename:
        raise ConfigError(f"model '{model}': label file '{filename}' must be a file name in the model directory")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model '{model}': unable to read label file '{filename}': {exc}") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines
