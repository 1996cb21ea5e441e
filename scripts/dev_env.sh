#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs tritonpy in editable mode.
# Sourced by the other scripts; safe to run again (it re-installs only when pyproject.toml changed).
# TRITONPY_EXTRAS picks the extras: "test" (the default: everything the test suite needs) or, for
# serve_examples.sh, "examples" (only what serving the example models needs: far smaller).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRITONPY_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
extras="${TRITONPY_EXTRAS-test}"
if [ ! -x "$venv/bin/python" ]; then
  echo "dev_env: creating $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --upgrade pip "setuptools>=68" wheel
fi
# One stamp per set of extras, so the test command still installs what serving did not.
stamp="$venv/.tritonpy-installed"
[ "$extras" = "test" ] || stamp="$stamp-${extras:-base}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  spec="$root"
  [ -z "$extras" ] || spec="$root[$extras]"
  echo "dev_env: installing tritonpy${extras:+[$extras]} into $venv (the first time takes a few minutes)" >&2
  "$venv/bin/python" -m pip install --progress-bar on -e "$spec"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export TRITONPY_VENV="$venv"
