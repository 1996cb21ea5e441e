"""Model-to-model calls run as the calling model's owner (core/tenancy/ownership.py).

Unit part: who owns what, from a tenants file. Server part, with a real server and real workers:
the operator calls a BLS model of team-a; its inner call to team-b's model answers exactly like an
unknown model (although the operator itself sees that model), its call to team-a's own model works
and takes team-a's rate tokens. The same for an ensemble owned by team-c.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.model_builders import FP32_IO, python_model
from support.server_process import ServerProcess
from tritonpy.core.tenancy.ownership import NOBODY, owner_of
from tritonpy.core.tenancy.tenants import parse_tenants

KEYS = {"ops": "ops-key-00000001", "team-a": "team-a-key-000001", "team-b": "team-b-key-000001",
        "team-c": "team-c-key-000001"}
# A tiny rate with a small burst: every admitted request of the owner is one token, never refilled
# during the test, so the count shows exactly which calls were charged to whom.
SLOW = {"rate": 0.0001, "burst": 2}
TENANTS = {
    "tenants": {
        "ops": {"keys": [KEYS["ops"]], "models": ["*"], "rights": ["inference", "statistics"]},
        "team-a": {"keys": [KEYS["team-a"]], "models": ["a_*"], "rights": ["inference"], "quota": SLOW},
        "team-b": {"keys": [KEYS["team-b"]], "models": ["b_*"], "rights": ["inference"]},
        "team-c": {"keys": [KEYS["team-c"]], "models": ["c_*"], "rights": ["inference"],
                   "quota": {"rate": 0.0001, "burst": 1}},
    }
}


def test_ownership_rules():
    config = parse_tenants({
        "operator_models": ["shared_ops"],
        "tenants": {
            "ops": {"keys": ["k" * 8 + "1"], "models": ["*"]},
            "a": {"keys": ["k" * 8 + "2"], "models": ["a_*", "common"]},
            "b": {"keys": ["k" * 8 + "3"], "models": ["b_*", "common", "both"], "owns": ["both"]},
            "c": {"keys": ["k" * 8 + "4"], "models": ["c_*"], "owns": ["both"]},
        },
    })
    assert owner_of(config, "a_model").name == "a"  # only team a claims it ('*' is no claim)
    assert owner_of(config, "common") is NOBODY  # claimed by a and b: nobody acts for it
    assert owner_of(config, "both") is NOBODY  # two tenants 'own' it
    assert owner_of(config, "nobody_lists_me") is None  # the operator's
    assert owner_of(config, "shared_ops") is None  # listed as the operator's
    assert config.tenants["c"].sees("both")  # what a tenant owns, it sees
    assert not NOBODY.sees("a_model") and NOBODY.may("inference")


def _bls_model(repo, name: str) -> None:
    # INPUT0[0] picks the model to call: 0 = team-b's, 1 = a name that does not exist, 2 = its own team's.
    body = """
    target = ["b_plain", "no_such_model", "a_plain"][int(x[0])]
    inner = pb_utils.InferenceRequest(model_name=target, inputs=[pb_utils.Tensor("INPUT0", x)],
                                      requested_output_names=["OUTPUT0"]).exec()
    if inner.has_error():
        raise pb_utils.TritonModelException("inner: " + inner.error().message())
    out = pb_utils.get_output_tensor_by_name(inner, "OUTPUT0").as_numpy() * 10
    """
    python_model(repo, name, body, config=FP32_IO)


def _ensemble(repo, name: str, step: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f"""
name: "{name}"
platform: "ensemble"
{FP32_IO}
ensemble_scheduling {{ step [ {{ model_name: "{step}" model_version: -1
  input_map {{ key: "INPUT0" value: "INPUT0" }} output_map {{ key: "OUTPUT0" value: "OUTPUT0" }} }} ] }}
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    repo = root / "repo"
    for name in ("a_plain", "b_plain", "c_plain"):
        python_model(repo, name, "out = x + 1", config=FP32_IO)
    _bls_model(repo, "a_bls")
    _ensemble(repo, "c_ens", "c_plain")
    _ensemble(repo, "c_ens_bad", "b_plain")
    tenants_file = root / "tenants.json"
    tenants_file.write_text(json.dumps(TENANTS))
    with ServerProcess(repo, "--tenants-config", str(tenants_file)) as proc:
        yield proc
    assert proc.proc.returncode == 0, proc.output()


def _call(server, model: str, first: float, who: str = "ops"):
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("INPUT0", [2], "FP32")
    inp.set_data_from_numpy(np.array([first, 5.0], dtype=np.float32))
    try:
        return client.infer(model, [inp], headers={"Authorization": f"Bearer {KEYS[who]}"}).as_numpy("OUTPUT0")
    finally:
        client.close()


def _error(server, model: str, first: float) -> str:
    with pytest.raises(InferenceServerException) as info:
        _call(server, model, first)
    return str(info.value.message())


def test_bls_runs_as_the_models_owner(server, leak_check):
    # ops sees b_plain itself, yet a_bls (team-a's) may not reach it: the same answer as a missing name.
    hidden = _error(server, "a_bls", 0)
    missing = _error(server, "a_bls", 1)
    assert "inner: Request for unknown model: 'b_plain' is not found" in hidden, hidden
    assert hidden.replace("b_plain", "no_such_model") == missing
    # Its own team's model works, and each inner call takes one of team-a's two tokens (the outer
    # calls are the operator's, which has no quota).
    assert _call(server, "a_bls", 2).tolist() == [30.0, 60.0]
    assert _call(server, "a_bls", 2).tolist() == [30.0, 60.0]
    limited = _error(server, "a_bls", 2)
    assert "inner: tenant quota exceeded: more than 0.0001 requests per second" in limited, limited
    # team-b is untouched by team-a's spending.
    assert _call(server, "b_plain", 1, who="team-b").tolist() == [2.0, 6.0]


def test_ensemble_steps_run_as_the_ensembles_owner(server, leak_check):
    bad = _error(server, "c_ens_bad", 1)
    assert "Request for unknown model: 'b_plain' is not found" in bad, bad
    assert _call(server, "c_ens", 1).tolist() == [2.0, 6.0]  # the step takes team-c's only token
    limited = _error(server, "c_ens", 1)
    assert "tenant quota exceeded: more than 0.0001 requests per second" in limited, limited
