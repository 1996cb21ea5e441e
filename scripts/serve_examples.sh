#!/usr/bin/env bash
# Builds the bundled example models (locally, no downloads) and serves them on ports 8000/8001/8002.
# Extra arguments go to tritonpy-server (e.g. --http-port 9000).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Serving needs the server and onnx (to build the ONNX examples), not the test tools.
TRITONPY_EXTRAS="${TRITONPY_EXTRAS-examples}" source "$root/scripts/dev_env.sh"
python "$root/examples/build_examples.py" --out "$root/examples/model_repository"
exec tritonpy-server --model-repository "$root/examples/model_repository" "$@"
