"""Ensembles and model control: load-time validation with precise messages, composing models loaded
with the ensemble in explicit mode, and unloads that take dependent ensembles (and, with
`unload_dependents`, the composing models loaded along) with them."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.ensemble_models import FP32_V, SCALE_CONFIG, branch_repo, ensemble, step
from support.model_builders import python_model
from support.server_process import ServerProcess

pytestmark = pytest.mark.timeout(180)

FP32_4x4 = "data_type: TYPE_FP32 dims: [ 4, 4 ]"
INT32_V = "data_type: TYPE_INT32 dims: [ -1 ]"
AB = {"INPUT0": "INPUT0", "INPUT1": "INPUT1"}
TWO_IN = {"INPUT0": FP32_V, "INPUT1": FP32_V}


def _broken(repo) -> dict[str, str]:
    """One broken ensemble per rule; returns name -> the text its load error must contain."""
    cases: dict[str, tuple[list[str], dict, dict, dict, str]] = {
        "e_unknown_model": (
            [step("ghost", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT"})], {"INPUT0": FP32_V}, {"OUT": FP32_V}, {},
            "ensemble 'e_unknown_model' contains models that are not available: ghost",
        ),
        "e_bad_input": (
            [step("scale_b", {"NOPE": "INPUT0"}, {"OUTPUT0": "OUT"})], {"INPUT0": FP32_V}, {"OUT": FP32_V}, {},
            "in ensemble 'e_bad_input', step 0: ensemble tensor 'INPUT0' is mapping to non-existing input 'NOPE' "
            "in model 'scale_b'",
        ),
        "e_bad_output": (
            [step("scale_b", {"INPUT0": "INPUT0"}, {"NOPE": "OUT"})], {"INPUT0": FP32_V}, {"OUT": FP32_V}, {},
            "in ensemble 'e_bad_output', step 0: ensemble tensor 'OUT' is mapped from non-existing output 'NOPE' "
            "in model 'scale_b'",
        ),
        "e_dtype": (
            [step("scale_b", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT"})], {"INPUT0": INT32_V}, {"OUT": FP32_V}, {},
            "in ensemble 'e_dtype', ensemble tensor 'INPUT0': inconsistent data type: TYPE_INT32 is inferred from "
            "ensemble 'e_dtype' input while TYPE_FP32 is inferred from model 'scale_b' input 'INPUT0'",
        ),
        "e_shape": (
            [step("scale_b", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT"})], {"INPUT0": FP32_4x4}, {"OUT": FP32_V}, {},
            "in ensemble 'e_shape', ensemble tensor 'INPUT0': inconsistent shape: [-1,4,4] is inferred from "
            "ensemble 'e_shape' input while [-1,-1] is inferred from model 'scale_b' input 'INPUT0'",
        ),
        "e_unmapped": (
            [step("add_sub_onnx", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT"})], {"INPUT0": FP32_V}, {"OUT": FP32_V}, {},
            "in ensemble 'e_unmapped', step 0: input 'INPUT1' in model 'add_sub_onnx' is not mapped to any "
            "ensemble tensor",
        ),
        "e_version": (
            [step("scale_b", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT"}, version=7)], {"INPUT0": FP32_V},
            {"OUT": FP32_V}, {}, "ensemble 'e_version' depends on 'scale_b' whose required version 7 is not loaded",
        ),
        "e_batch": (
            [step("scale_b", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT"})], {"INPUT0": FP32_V}, {"OUT": FP32_V},
            {"max_batch_size": 16},
            "ensemble 'e_batch' allows maximum batch size 16, but it contains model 'scale_b' which only allows "
            "maximum batch size to be 8",
        ),
        "e_step_cycle": (
            [step("add_sub_onnx", {"INPUT0": "INPUT0", "INPUT1": "t2"}, {"OUTPUT0": "t1", "OUTPUT1": "OUT"}),
             step("scale_b", {"INPUT0": "t1"}, {"OUTPUT0": "t2"})],
            {"INPUT0": FP32_V}, {"OUT": FP32_V}, {},
            "ensemble_scheduling: steps form a cycle: step 0 -> step 1 -> step 0",
        ),
        "e_unused": (
            [step("add_sub_onnx", AB, {"OUTPUT0": "OUT", "OUTPUT1": "spare"})], TWO_IN, {"OUT": FP32_V}, {},
            "ensemble tensor 'spare' (written by step 0) is unused",
        ),
        "e_loop_a": (
            [step("e_loop_b", {"INPUT0": "INPUT0"}, {"OUT": "OUT"})], {"INPUT0": FP32_V}, {"OUT": FP32_V}, {},
            "circular dependency between ensembles: e_loop_a -> e_loop_b -> e_loop_a",
        ),
        "e_loop_b": (
            [step("e_loop_a", {"INPUT0": "INPUT0"}, {"OUT": "OUT"})], {"INPUT0": FP32_V}, {"OUT": FP32_V}, {},
            "circular dependency between ensembles: e_loop_b -> e_loop_a -> e_loop_b",
        ),
    }
    expected = {}
    for name, (steps, ins, outs, kw, message) in cases.items():
        ensemble(repo, name, steps, inputs=ins, outputs=outs, **kw)
        expected[name] = message
    return expected


def test_validation_errors_at_load(tmp_path, leak_check):
    repo = branch_repo(tmp_path / "repo", tmp_path / "marks")
    expected = _broken(repo)
    with ServerProcess(repo, "--model-control-mode=explicit") as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        for i, (name, message) in enumerate(sorted(expected.items())):
            client = http if i % 2 else grpc
            with pytest.raises(InferenceServerException) as err:
                client.load_model(name)
            assert message in err.value.message(), (name, err.value.message())
            assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), name
            assert not http.is_model_ready(name)
        rows = {(r["name"], r.get("state", "")): r.get("reason", "") for r in http.get_model_repository_index()}
        assert expected["e_dtype"] in rows[("e_dtype", "UNAVAILABLE")]
        # the composing models loaded on the way still serve
        assert http.is_model_ready("scale_b") and http.is_model_ready("add_sub_onnx")


def _ready(client) -> set[str]:
    return {r["name"] for r in client.get_model_repository_index() if r.get("state") == "READY"}


def test_explicit_load_brings_composing_models_and_unloads_cascade(tmp_path, leak_check):
    repo = branch_repo(tmp_path / "repo", tmp_path / "marks")
    with ServerProcess(repo, "--model-control-mode=explicit", "--load-model=branch") as server:
        http = httpclient.InferenceServerClient(server.http_url)
        assert _ready(http) == {"branch", "add_sub_onnx", "scale_b", "scale_c"}
        assert http.is_server_ready()
        a = np.ones((1, 4), dtype=np.float32)
        ins = [httpclient.InferInput("INPUT0", [1, 4], "FP32"), httpclient.InferInput("INPUT1", [1, 4], "FP32")]
        for t in ins:
            t.set_data_from_numpy(a)
        assert http.infer("branch", ins, request_id="sync-x").as_numpy("SUM2").tolist() == [[4.0] * 4]

        # Unloading a composing model takes the ensemble that uses it down too.
        http.unload_model("scale_c")
        assert _ready(http) == {"add_sub_onnx", "scale_b"}
        with pytest.raises(InferenceServerException):
            http.infer("branch", ins)

        # Loading the ensemble again loads what it is missing.
        http.load_model("branch")
        assert _ready(http) == {"branch", "add_sub_onnx", "scale_b", "scale_c"}

        # Without unload_dependents the composing models stay.
        http.unload_model("branch")
        assert _ready(http) == {"add_sub_onnx", "scale_b", "scale_c"}

        # With it, the implicitly loaded composing models go; an explicitly loaded one stays.
        http.load_model("scale_b")
        http.load_model("branch")
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        grpc.unload_model("branch", unload_dependents=True)
        assert _ready(http) == {"scale_b"}
        assert http.is_server_ready()


def test_startup_in_none_mode_waits_for_composing_models_and_reports_broken_ones(tmp_path, leak_check):
    repo = branch_repo(tmp_path / "repo", tmp_path / "marks")
    python_model(repo, "broken", "out = x", config=SCALE_CONFIG, initialize="raise RuntimeError('no init today')")
    ensemble(repo, "uses_broken", [step("broken", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUT"})],
             inputs={"INPUT0": FP32_V}, outputs={"OUT": FP32_V})
    with ServerProcess(repo, "--exit-on-error=false", wait_ready=False) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        assert http.is_model_ready("branch")
        rows = {r["name"]: r for r in http.get_model_repository_index()}
        assert rows["uses_broken"]["state"] == "UNAVAILABLE"
        reason = rows["uses_broken"]["reason"]
        assert "ensemble 'uses_broken' depends on 'broken' which is not valid" in reason
        assert "no init today" in reason
        assert not http.is_server_ready()  # strict readiness: a model failed
