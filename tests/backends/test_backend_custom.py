"""Custom backends: shipped with the model, installed through an entry point; the registry's rules."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tritonpy.backends import registry
from tritonpy.backends.base import Backend, BackendError, BackendRequest, BackendResponse, OutputTensor
from tritonpy.backends.identity import IdentityBackend
from tritonpy.proto.messages import ErrorCode
from support.worker_harness import WorkerHarness, write_model

SCALE_BACKEND = textwrap.dedent(
    '''
    """A backend shipped inside the model repository: OUT = IN * factor."""
    import numpy as np

    from tritonpy.backends.base import Backend, BackendResponse


    class ScaleBackend(Backend):
        name = "scale"

        @classmethod
        def auto_complete_config(cls, config, model_dir, version_dir):
            config.setdefault("parameters", {})["factor"] = {"string_value": "3"}
            return config

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.factor = float(self.config["parameters"]["factor"]["string_value"])

        def execute(self, requests, gathered):
            return [BackendResponse({"OUT": r.inputs["IN"] * np.float32(self.factor)}) for r in requests]
    '''
)


def test_backend_shipped_with_the_model(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "scaled", files={"../scale_backend.py": SCALE_BACKEND})
    config = {"name": "scaled", "backend": "scale"}
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="scale", config=config, autocomplete=True) as h:
        h.start()
        done = h.init()
        assert done.ok, done.error
        out = h.infer({"IN": np.arange(4, dtype=np.float32)})
        np.testing.assert_array_equal(out["OUT"], [0, 3, 6, 9])
        assert h.finalize() == 0


def test_version_directory_file_wins_over_model_directory(tmp_path):
    model_dir = write_model(
        tmp_path,
        "m",
        files={
            "../scale_backend.py": SCALE_BACKEND,
            "scale_backend.py": SCALE_BACKEND.replace("class ScaleBackend", "class VersionScaleBackend"),
        },
    )
    cls = registry.find_backend("scale", model_dir=model_dir, version_dir=model_dir / "1")
    assert cls.__name__ == "VersionScaleBackend"


def test_shipped_module_must_define_one_backend(tmp_path):
    two = "from tritonpy.backends.base import Backend\nclass A(Backend): pass\nclass B(Backend): pass\n"
    model_dir = write_model(tmp_path, "m", files={"../two_backend.py": two})
    with pytest.raises(BackendError, match="exactly one subclass.*found A, B"):
        registry.find_backend("two", model_dir=model_dir, version_dir=model_dir / "1")
    explicit = two + "BACKEND = B\n"
    (model_dir / "two_backend.py").write_text(explicit)
    assert registry.find_backend("two", model_dir=model_dir, version_dir=model_dir / "1").__name__ == "B"


def test_unknown_and_invalid_names(tmp_path):
    with pytest.raises(BackendError, match=r"unknown backend 'nope'; known backends: .*identity.*onnxruntime.*python") as info:
        registry.find_backend("nope", model_dir=tmp_path, version_dir=tmp_path / "1")
    assert info.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(BackendError, match="invalid backend name"):
        registry.find_backend("../../etc", model_dir=tmp_path, version_dir=tmp_path / "1")


def test_entry_point_backend(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "ep_pkg").mkdir(parents=True)
    (site / "ep_pkg" / "__init__.py").write_text(
        "from tritonpy.backends.base import Backend\nclass EpBackend(Backend):\n    name = 'ep'\n"
    )
    dist = site / "ep_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tritonpy.backends]\nep = ep_pkg:EpBackend\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        assert "ep" in registry.known_backends()
        cls = registry.find_backend("ep", model_dir=tmp_path, version_dir=tmp_path / "1")
        assert cls.__name__ == "EpBackend"
    finally:
        sys.modules.pop("ep_pkg", None)


def test_builtins_resolve_without_importing_frameworks_early():
    assert registry.find_backend("identity", model_dir=Path("/nonexistent"), version_dir=Path("/nonexistent/1")) is IdentityBackend


# -- the Backend API in-process ----------------------------------------------------------------


def _identity(config_extra: dict | None = None) -> IdentityBackend:
    config = {
        "name": "ident",
        "input": [{"name": "A"}, {"name": "B"}],
        "output": [{"name": "A_OUT"}, {"name": "B_OUT"}],
        **(config_extra or {}),
    }
    return IdentityBackend(
        config=config, model_dir=Path("/m"), version_dir=Path("/m/1"), instance_name="ident_0",
        kind="KIND_CPU", device_id=0, backend_config={},
    )


def _req(**arrays: np.ndarray) -> BackendRequest:
    return BackendRequest(
        request_id="", inputs=dict(arrays), datatypes={k: "INT32" for k in arrays}, requested_outputs=[]
    )


def test_identity_maps_outputs_by_index_and_keeps_types():
    backend = _identity()
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    (response,) = backend.execute([_req(A=a, B=a + 1)], None)
    assert [(o.name, o.datatype) for o in response.outputs] == [("A_OUT", "INT32"), ("B_OUT", "INT32")]
    assert response.outputs[0].array is a  # no copy


def test_identity_with_gathered_returns_row_views_of_the_batch():
    backend = _identity()
    whole = np.arange(12, dtype=np.int32).reshape(6, 2)
    reqs = [_req(A=whole[0:2]), _req(A=whole[2:3]), _req(A=whole[3:6])]
    responses = backend.execute(reqs, {"A": whole})
    assert all(np.shares_memory(r.outputs[0].array, whole) for r in responses)
    np.testing.assert_array_equal(responses[2].outputs[0].array, whole[3:6])


def test_identity_requires_inputs_and_outputs_and_numeric_delay():
    with pytest.raises(BackendError, match="needs inputs and outputs"):
        IdentityBackend(config={"name": "x"}, model_dir=Path("/m"), version_dir=Path("/m/1"),
                        instance_name="x", kind="KIND_CPU", device_id=0, backend_config={})
    with pytest.raises(BackendError, match="execute_delay_ms"):
        _identity({"parameters": {"execute_delay_ms": {"string_value": "soon"}}})


def test_backend_response_accepts_several_output_forms():
    arr = np.ones(2, np.float32)
    forms = [
        {"O": arr},
        {"O": ("FP32", arr)},
        [("O", "FP32", arr)],
        [OutputTensor("O", "FP32", arr)],
    ]
    for outputs in forms:
        (out,) = BackendResponse(outputs).outputs
        assert (out.name, out.datatype) == ("O", "FP32") and out.array is arr
    assert BackendResponse({"S": np.array([b"x"], dtype=object)}).outputs[0].datatype == "BYTES"
    failed = BackendResponse.failure("nope", ErrorCode.INVALID_ARG)
    assert failed.error.code == ErrorCode.INVALID_ARG and failed.outputs == []


def test_base_backend_defaults():
    backend = Backend(config={"name": "m"}, model_dir=Path("/m"), version_dir=Path("/m/1"), instance_name="m_0",
                      kind="KIND_CPU", device_id=0, backend_config={})
    assert backend.is_ready() is True and backend.model_name == "m"
    assert Backend.auto_complete_config({"a": 1}, Path("/m"), Path("/m/1")) == {"a": 1}
    with pytest.raises(BackendError, match="does not implement execute"):
        backend.execute([], None)


def _docs_example() -> str:
    """The worked example of docs/backends.md, as published."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "backends.md").read_text()
    after = text.split("`model_repository/doubler/scale_backend.py`:", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_example_backend_works(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "doubler", files={"../scale_backend.py": _docs_example()})
    config = {
        "name": "doubler", "backend": "scale", "max_batch_size": 8,
        "parameters": {"factor": {"string_value": "2"}},
    }
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="scale", config=config, autocomplete=True) as h:
        h.start()
        done = h.init()
        assert done.ok, done.error
        out = h.infer({"IN": np.arange(3, dtype=np.float32)})
        np.testing.assert_array_equal(out["OUT"], [0, 2, 4])
        per_request = [{"IN": np.full((n, 2000), n, np.float32)} for n in (1, 2)]
        requests, gathered = h.gathered_batch(per_request)
        result = h.execute(requests, gathered=gathered)
        assert len({r.outputs[0].segment for r in result.responses}) == 1  # written once
        for n, response in zip((1, 2), result.responses):
            assert np.all(h.outputs(response)["OUT"] == 2 * n)
        h.release(result.batch_id)
        assert h.finalize() == 0
