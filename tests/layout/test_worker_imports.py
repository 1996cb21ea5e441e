"""Import direction: the worker side never loads the core or the frontends, nor frameworks early."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tritonpy.backends

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_import(module: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(out.stdout)


def test_worker_loads_no_core_or_frontends_module():
    loaded = _modules_after_import("tritonpy.backends.worker.process")
    forbidden = [m for m in loaded if m.startswith(("tritonpy.core", "tritonpy.frontends"))]
    assert forbidden == []
    # Frameworks are imported by the backend that needs them, inside its worker, never up front.
    assert "onnxruntime" not in loaded
    assert "aiohttp" not in loaded and "grpc" not in loaded


def _backend_modules() -> list[str]:
    root = Path(tritonpy.backends.__file__).parent
    return sorted(
        info.name for info in pkgutil.walk_packages([str(root)], prefix="tritonpy.backends.")
    )


@pytest.mark.parametrize("module", _backend_modules())
def test_each_backend_module_imports_alone(module):
    loaded = _modules_after_import(module)
    assert not [m for m in loaded if m.startswith(("tritonpy.core", "tritonpy.frontends"))]
