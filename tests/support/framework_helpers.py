"""Helpers for the framework-backend tests (pytorch, openvino, tensorflow, tensorrt).

- `hide_package`: make a package look uninstalled to every process started afterwards, by putting
  a directory first on PYTHONPATH whose `<package>/__init__.py` raises ModuleNotFoundError exactly
  as a missing package does. The server and its workers inherit the environment, so the backend's
  real import path runs and fails as it would on a machine without the framework.
- `load_error`: the reason an explicit load fails with, as a client sees it.
- `infer_http` / `infer_grpc`: one inference through the real tritonclient.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

_SHADOW = """raise ModuleNotFoundError("No module named '{name}'", name="{name}")\n"""


def hide_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, package: str) -> None:
    shadow = tmp_path / f"hide_{package}"
    (shadow / package).mkdir(parents=True, exist_ok=True)
    (shadow / package / "__init__.py").write_text(_SHADOW.format(name=package))
    current = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", str(shadow) + (os.pathsep + current if current else ""))


def load_error(http_url: str, model: str) -> str:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(http_url)
    try:
        client.load_model(model)
    except InferenceServerException as exc:
        return exc.message()
    finally:
        client.close()
    raise AssertionError(f"loading '{model}' unexpectedly succeeded")


def infer_http(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    client = httpclient.InferenceServerClient(url)
    try:
        infer_inputs = []
        for name, array in inputs.items():
            i = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            i.set_data_from_numpy(array, binary_data=True)
            infer_inputs.append(i)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
        result = client.infer(model, infer_inputs, outputs=wanted)
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        client.close()


def infer_grpc(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(url)
    try:
        infer_inputs = []
        for name, array in inputs.items():
            i = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            i.set_data_from_numpy(array)
            infer_inputs.append(i)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs]
        result = client.infer(model, infer_inputs, outputs=wanted)
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        client.close()


def infer_concurrently(url: str, model: str, batches: list[dict[str, np.ndarray]], outputs: list[str]) -> list[dict[str, np.ndarray]]:
    """Send all requests at once (HTTP, async) so the dynamic batcher can combine them."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    client = httpclient.InferenceServerClient(url, concurrency=len(batches))
    try:
        pending = []
        for inputs in batches:
            infer_inputs = []
            for name, array in inputs.items():
                i = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                i.set_data_from_numpy(array, binary_data=True)
                infer_inputs.append(i)
            wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
            pending.append(client.async_infer(model, infer_inputs, outputs=wanted))
        results = [p.get_result() for p in pending]
        return [{n: r.as_numpy(n) for n in outputs} for r in results]
    finally:
        client.close()
