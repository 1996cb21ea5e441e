#!/usr/bin/env bash
# The whole test suite: sets up .venv on first use, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/dev_env.sh"
cd "$root"
"$root/scripts/system_deps.sh"
exec python -m pytest -q -p no:cacheprovider "$@"
