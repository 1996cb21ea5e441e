"""Build the example model repository locally, without downloading anything.

    python examples/build_examples.py [--out DIR]      (default: examples/model_repository)

Models (see examples/README.md):
- densenet_onnx   ONNX, a small DenseNet-like CNN with random weights; data_0 FP32 [1,3,224,224] ->
                  fc6_1 FP32 [1,1000,1,1], with 1000 labels; max_batch_size 0 (as Triton's quick start).
- add_sub         Python backend: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [4].
- add_sub_onnx    the same arithmetic in ONNX, max_batch_size 8 with dynamic batching.
- string_identity Python backend, BYTES INPUT0 [-1] -> OUTPUT0 (the same strings), max_batch_size 8.

Running it again overwrites each model folder; other folders in DIR are left alone.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "model_repository"
# ONNX versions every onnxruntime >= 1.17 loads (IR 8 = ONNX 1.10+).
OPSET = 13
IR_VERSION = 8


# ---- ONNX models --------------------------------------------------------------------------------

def _densenet_model():
    """A DenseNet-flavoured CNN: stem conv, a dense block (conv+relu, concat), pooling, 1x1 classifier."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    nodes, inits = [], []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:]))
        data = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(data, name))
        return name

    def conv(x: str, out: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        w = weight(f"{out}_w", (cout, cin, k, k))
        b = f"{out}_b"
        inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.01).astype(np.float32), b))
        pad = k // 2
        nodes.append(helper.make_node(
            "Conv", [x, w, b], [out], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
        ))
        return out

    def relu(x: str, out: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    x = relu(conv("data_0", "stem", 3, 16, 3, stride=2), "stem_relu")  # 16 x 112 x 112
    nodes.append(helper.make_node("MaxPool", [x], ["pool0"], kernel_shape=[2, 2], strides=[2, 2]))
    x, channels, growth = "pool0", 16, 8  # 56 x 56
    for i in range(3):
        new = relu(conv(x, f"dense{i}", channels, growth, 3), f"dense{i}_relu")
        nodes.append(helper.make_node("Concat", [x, new], [f"concat{i}"], axis=1))
        x, channels = f"concat{i}", channels + growth
    x = relu(conv(x, "transition", channels, 64, 1), "transition_relu")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    conv("gap", "fc6_1", 64, 1000, 1)

    graph = helper.make_graph(
        nodes, "densenet_small",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        initializer=inits,
    )
    return _finish(graph)


def _add_sub_model():
    from onnx import TensorProto, helper

    def io(name: str):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [io("INPUT0"), io("INPUT1")],
        [io("OUTPUT0"), io("OUTPUT1")],
    )
    return _finish(graph)


def _finish(graph):
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tritonpy-examples"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# ---- configurations and Python models ----------------------------------------------------------

DENSENET_CONFIG = """\
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    dims: [ 1, 3, 224, 224 ]
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1, 1000, 1, 1 ]
    label_filename: "densenet_labels.txt"
  }
]
"""

ADD_SUB_CONFIG = """\
name: "add_sub"
backend: "python"
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

ADD_SUB_ONNX_CONFIG = """\
name: "add_sub_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { }
"""

STRING_IDENTITY_CONFIG = """\
name: "string_identity"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

ADD_SUB_PY = '''\
"""add_sub: OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1 (Triton's classic Python example)."""
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # The output data types come from the model configuration.
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out_0 = pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.output0_dtype))
            out_1 = pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.output1_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1]))
        return responses

    def finalize(self):
        pass
'''

STRING_IDENTITY_PY = '''\
"""string_identity: returns its BYTES input unchanged (any shape, batched by the dynamic batcher)."""
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            strings = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", np.array(strings, dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''


def _fresh(model_dir: Path) -> Path:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    return model_dir


def build(out: Path) -> list[str]:
    """Write every example model under `out`; returns the model names."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)

    d = _fresh(out / "densenet_onnx")
    onnx.save(_densenet_model(), str(d / "1" / "model.onnx"))
    (d / "config.pbtxt").write_text(DENSENET_CONFIG)
    (d / "densenet_labels.txt").write_text("".join(f"label_{i}\n" for i in range(1000)))

    d = _fresh(out / "add_sub")
    (d / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    (d / "1" / "model.py").write_text(ADD_SUB_PY)

    d = _fresh(out / "add_sub_onnx")
    onnx.save(_add_sub_model(), str(d / "1" / "model.onnx"))
    (d / "config.pbtxt").write_text(ADD_SUB_ONNX_CONFIG)

    d = _fresh(out / "string_identity")
    (d / "config.pbtxt").write_text(STRING_IDENTITY_CONFIG)
    (d / "1" / "model.py").write_text(STRING_IDENTITY_PY)

    return ["densenet_onnx", "add_sub", "add_sub_onnx", "string_identity"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"repository folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    names = build(args.out)
    print(f"built {len(names)} models in {args.out}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
