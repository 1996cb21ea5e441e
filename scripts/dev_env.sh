#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs tritonpy in editable mode
# with the test extras. Sourced by the other scripts; safe to run again (it re-installs only when
# pyproject.toml changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRITONPY_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip "setuptools>=68" wheel
fi
stamp="$venv/.tritonpy-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export TRITONPY_VENV="$venv"
