"""Model repositories for the ensemble tests: an ONNX add/sub model, Python scale models, ensembles.

`scale_b` (x*2) and `scale_c` (x*3) take part in a rendezvous when the request id starts with
"sync": each marks that it started and waits for the other's mark, so the request only succeeds
if the two branch steps really ran at the same time (no timing assertion needed). A request id
starting with "fail" makes `scale_c` fail with UNAVAILABLE; "slow" makes `scale_b` sleep 3 s.
"""
from __future__ import annotations

from pathlib import Path

from support.model_builders import python_model

FP32_V = 'data_type: TYPE_FP32 dims: [ -1 ]'


def add_sub_onnx(repo: Path, name: str = "add_sub_onnx") -> Path:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; FP32 [-1], max_batch_size 8."""
    import onnx
    from onnx import TensorProto, helper

    def io(tensor: str):
        return helper.make_tensor_value_info(tensor, TensorProto.FLOAT, ["batch", "n"])

    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "add_sub", [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f'input [ {{ name: "INPUT0" {FP32_V} }}, {{ name: "INPUT1" {FP32_V} }} ]\n'
        f'output [ {{ name: "OUTPUT0" {FP32_V} }}, {{ name: "OUTPUT1" {FP32_V} }} ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )
    return model_dir


SCALE_CONFIG = f"""
max_batch_size: 8
input [ {{ name: "INPUT0" {FP32_V} }} ]
output [ {{ name: "OUTPUT0" {FP32_V} }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def scale_model(repo: Path, name: str, factor: int, me: str, peer: str, marks: Path) -> Path:
    body = f"""
rid = req.request_id()
if rid.startswith("sync"):
    open(os.path.join({str(marks)!r}, rid + ".{me}"), "w").close()
    deadline = time.time() + 20
    while not os.path.exists(os.path.join({str(marks)!r}, rid + ".{peer}")):
        if time.time() > deadline:
            raise pb_utils.TritonError("the other branch never started: the steps did not run concurrently")
        time.sleep(0.005)
if rid.startswith("fail") and "{me}" == "c":
    raise pb_utils.TritonError("scale_c refuses request " + rid, pb_utils.TritonError.UNAVAILABLE)
if rid.startswith("slow") and "{me}" == "b":
    time.sleep(3)
out = (x * {factor}).astype(np.float32)
"""
    return python_model(repo, name, body, config=SCALE_CONFIG)


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version} {ins} {outs} }}'


def ensemble(repo: Path, name: str, steps: list[str], *, inputs: dict[str, str], outputs: dict[str, str],
             max_batch_size: int = 8, extra: str = "") -> Path:
    """An ensemble; `inputs`/`outputs` map tensor names to their 'data_type ... dims ...' text."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    ins = ", ".join(f'{{ name: "{n}" {spec} }}' for n, spec in inputs.items())
    outs = ", ".join(f'{{ name: "{n}" {spec} }}' for n, spec in outputs.items())
    (model_dir / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        f"input [ {ins} ]\noutput [ {outs} ]\n{extra}\n"
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )
    return model_dir


def branch_repo(repo: Path, marks: Path) -> Path:
    """add_sub_onnx -> (sum -> scale_b, diff -> scale_c): `branch` returns SUM2 = 2(a+b), DIFF3 = 3(a-b)."""
    repo.mkdir(parents=True, exist_ok=True)
    marks.mkdir(parents=True, exist_ok=True)
    add_sub_onnx(repo)
    scale_model(repo, "scale_b", 2, "b", "c", marks)
    scale_model(repo, "scale_c", 3, "c", "b", marks)
    ensemble(
        repo, "branch",
        [
            step("add_sub_onnx", {"INPUT0": "INPUT0", "INPUT1": "INPUT1"}, {"OUTPUT0": "sum", "OUTPUT1": "diff"}),
            step("scale_b", {"INPUT0": "sum"}, {"OUTPUT0": "SUM2"}),
            step("scale_c", {"INPUT0": "diff"}, {"OUTPUT0": "DIFF3"}),
        ],
        inputs={"INPUT0": FP32_V, "INPUT1": FP32_V},
        outputs={"SUM2": FP32_V, "DIFF3": FP32_V},
    )
    return repo
