"""Per-model Python environments: which interpreter a model's workers run with.

Two sources, checked in this order:

* `EXECUTION_ENV_PATH` (a model config parameter, as in Triton's Python backend): an unpacked
  environment directory (a venv or conda env, with `bin/python`) or a packed archive (`.tar.gz`,
  `.tgz`, `.tar`, e.g. from conda-pack) that is unpacked once into the cache. `$$TRITON_MODEL_DIRECTORY`
  in the value is replaced by the model's folder; a relative path is taken from that folder.
* Beyond Triton: a `requirements.txt` in the model folder. It is installed once, at load time,
  into a venv of its own (`python -m venv --system-site-packages`, then `pip install -r`); the
  venv is cached under a key made from the requirements text and the Python version, so an
  unchanged file costs nothing at the next load and two models with the same file share one venv.

The worker then runs with that interpreter (core/instance/limits.py adds this server's own
site directories at the end of `sys.path`, so the model's packages win and ours are still found).
Any failure becomes an `EnvironmentBuildError` whose message is the model's load failure reason.

Builds run in a subprocess (never blocking the event loop) into a temporary directory that is
renamed into place when complete, so a crashed build never leaves a half-made venv that looks ready.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile

log = logging.getLogger("tritonpy.core.instance.python_env")

__all__ = ["EnvironmentBuildError", "PARAM_ENV_PATH", "REQUIREMENTS", "default_cache_dir", "prepare"]

PARAM_ENV_PATH = "EXECUTION_ENV_PATH"
REQUIREMENTS = "requirements.txt"
MODEL_DIR_VAR = "$$TRITON_MODEL_DIRECTORY"
READY_MARKER = ".tritonpy-ready"
BUILD_TIMEOUT_S = 900.0
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

# One build per cache entry at a time in this process; others wait and reuse it.
_LOCKS: dict[str, asyncio.Lock] = {}


class EnvironmentBuildError(Exception):
    """The model's Python environment could not be made; the message says why."""


def default_cache_dir(backend_config: dict[str, str] | None = None) -> str:
    """`--backend-config=python,env-cache-dir=<dir>`, else $TRITONPY_ENV_CACHE, else ~/.cache/tritonpy/envs."""
    configured = (backend_config or {}).get("env-cache-dir") or os.environ.get("TRITONPY_ENV_CACHE")
    return configured or os.path.join(os.path.expanduser("~"), ".cache", "tritonpy", "envs")


def _env_path_parameter(config_json: str) -> str:
    try:
        config = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError:
        return ""
    value = (config.get("parameters") or {}).get(PARAM_ENV_PATH)
    if isinstance(value, dict):
        value = value.get("string_value", "")
    return str(value or "")


def _interpreter(env_dir: str) -> str | None:
    for name in ("python3", "python"):
        path = os.path.join(env_dir, "bin", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


async def prepare(model_dir: str, config_json: str, *, cache_dir: str) -> str:
    """The interpreter for this model's workers; '' means this server's own."""
    raw = _env_path_parameter(config_json)
    if raw:
        return await _from_env_path(raw, model_dir, cache_dir)
    requirements = os.path.join(model_dir, REQUIREMENTS)
    if os.path.isfile(requirements):
        return await _from_requirements(requirements, cache_dir)
    return ""


# --- EXECUTION_ENV_PATH ---------------------------------------------------------------------------
async def _from_env_path(raw: str, model_dir: str, cache_dir: str) -> str:
    path = raw.replace(MODEL_DIR_VAR, model_dir)
    if not os.path.isabs(path):
        path = os.path.join(model_dir, path)
    if os.path.isdir(path):
        python = _interpreter(path)
        if python is None:
            raise EnvironmentBuildError(f"{PARAM_ENV_PATH} '{raw}': the directory has no bin/python")
        return python
    if not os.path.isfile(path):
        raise EnvironmentBuildError(f"{PARAM_ENV_PATH} '{raw}': no such file or directory")
    if not path.endswith(_ARCHIVE_SUFFIXES):
        raise EnvironmentBuildError(f"{PARAM_ENV_PATH} '{raw}': expected a directory or a .tar.gz/.tgz/.tar archive")
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]
    target = os.path.join(cache_dir, f"packed-{key}")
    async with _LOCKS.setdefault(target, asyncio.Lock()):
        if not os.path.exists(os.path.join(target, READY_MARKER)):
            await asyncio.to_thread(_unpack, path, target, raw)
    python = _interpreter(target)
    if python is None:
        raise EnvironmentBuildError(f"{PARAM_ENV_PATH} '{raw}': the archive holds no bin/python")
    return python


def _unpack(archive: str, target: str, shown: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".", dir=os.path.dirname(target))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="tar")  # no absolute paths, no escaping links
        except (tarfile.TarError, OSError) as exc:
            raise EnvironmentBuildError(f"{PARAM_ENV_PATH} '{shown}': cannot unpack the archive: {exc}") from None
        fixer = os.path.join(tmp, "bin", "conda-unpack")  # conda-pack's prefix fixer
        if os.path.isfile(fixer):
            import subprocess

            subprocess.run([fixer], cwd=tmp, check=False, capture_output=True, timeout=BUILD_TIMEOUT_S)
        open(os.path.join(tmp, READY_MARKER), "w").close()
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: str, target: str) -> None:
    try:
        os.rename(tmp, target)
    except OSError:
        if not os.path.exists(os.path.join(target, READY_MARKER)):
            raise


# --- requirements.txt -----------------------------------------------------------------------------
async def _from_requirements(requirements: str, cache_dir: str) -> str:
    with open(requirements, "rb") as fh:
        text = fh.read()
    version = f"{sys.version_info.major}.{sys.version_info.minor}:{sys.executable}"
    key = hashlib.sha256(version.encode() + b"\0" + text).hexdigest()[:20]
    target = os.path.join(cache_dir, f"req-{key}")
    async with _LOCKS.setdefault(target, asyncio.Lock()):
        if not os.path.exists(os.path.join(target, READY_MARKER)):
            await _build_venv(requirements, target)
    python = _interpreter(target)
    if python is None:
        raise EnvironmentBuildError(f"the cached environment {target} has no bin/python")
    return python


async def _run(argv: list[str], what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT_S)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
        tail = " | ".join(lines[-4:]) or f"exit code {proc.returncode}"
        raise EnvironmentBuildError(f"{what} failed: {tail}")


async def _build_venv(requirements: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".", dir=os.path.dirname(target))
    log.info("building the Python environment for %s in %s", requirements, target)
    try:
        # --without-pip: our own pip installs into it (`pip --python`), which saves ensurepip's seconds.
        await _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", tmp],
                   "creating the virtual environment")
        python = _interpreter(tmp)
        if python is None:
            raise EnvironmentBuildError("creating the virtual environment failed: it has no bin/python")
        await _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-input",
                    "--disable-pip-version-check", "-r", requirements],
                   f"installing {os.path.basename(os.path.dirname(requirements))}/{REQUIREMENTS}")
        open(os.path.join(tmp, READY_MARKER), "w").close()
        # A venv's scripts name its own path; moving it keeps `bin/python` working (a symlink) and
        # nothing here runs the other scripts, so the rename is safe.
        _move_into_place(tmp, target)
    except EnvironmentBuildError:
        raise
    except OSError as exc:
        raise EnvironmentBuildError(f"building the environment failed: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
