"""Model configuration: parsing, backend detection, completion, Triton defaults, validation, JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from tritonpy.core.repository.config import (
    ConfigError,
    apply_backend_completion,
    backend_for,
    config_from_json,
    finalize_config,
    load_config,
    parse_config_text,
    resolve_backend,
    validate_config,
)
from tritonpy.core.repository.config_json import config_to_json, model_metadata
from tritonpy.core.errors import ErrorCode, ServerError
from tritonpy.core.repository.scan import ModelSource, scan_versions
from tritonpy.proto import model_config_pb2 as mc

# GET /v2/models/densenet_onnx/config from Triton 25.12 (quick start, auto-completed ORT model).
TRITON_DENSENET_CONFIG = (
    "{\"name\":\"densenet_onnx\",\"platform\":\"onnxruntime_onnx\",\"backend\":\"onnxruntime\",\"runtime\":\"\",\"vers"
    "ion_policy\":{\"latest\":{\"num_versions\":1}},\"max_batch_size\":0,\"input\":[{\"name\":\"data_0\",\"data_typ"
    "e\":\"TYPE_FP32\",\"format\":\"FORMAT_NONE\",\"dims\":[1,3,224,224],\"is_shape_tensor\":false,\"allow_ragged"
    "_batch\":false,\"optional\":false,\"is_non_linear_format_io\":false}],\"output\":[{\"name\":\"fc6_1\",\"data"
    "_type\":\"TYPE_FP32\",\"dims\":[1,1000,1,1],\"label_filename\":\"\",\"is_shape_tensor\":false,\"is_non_linea"
    "r_format_io\":false}],\"batch_input\":[],\"batch_output\":[],\"optimization\":{\"priority\":\"PRIORITY_DEF"
    "AULT\",\"input_pinned_memory\":{\"enable\":true},\"output_pinned_memory\":{\"enable\":true},\"gather_kerne"
    "l_buffer_threshold\":0,\"eager_batching\":false},\"instance_group\":[{\"name\":\"densenet_onnx\",\"kind\":\""
    "KIND_CPU\",\"count\":2,\"gpus\":[],\"secondary_devices\":[],\"profile\":[],\"passive\":false,\"host_policy\":"
    "\"\"}],\"default_model_filename\":\"model.onnx\",\"cc_model_filenames\":{},\"metric_tags\":{},\"parameters\""
    ":{},\"model_warmup\":[]}"
)


def make_model(root: Path, name: str, config: str | None, files: dict[str, str] | None = None) -> ModelSource:
    """A model folder: optional config.pbtxt, and files relative to the model dir ("1/model.onnx")."""
    model_dir = root / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for rel, content in (files or {}).items():
        path = model_dir / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    return ModelSource(name=name, repository=str(root), path=model_dir, version_dirs=scan_versions(model_dir))


def full(text: str, name: str = "m", *, autocomplete: bool = True) -> mc.ModelConfig:
    """parse + resolve + finalize, as the manager does for a config without completion."""
    config = parse_config_text(text, model=name)
    if not config.name:
        config.name = name
    resolve_backend(config)
    return finalize_config(config, autocomplete=autocomplete)


# ---- parsing --------------------------------------------------------------------------------------

ORT_BATCHING = """
name: "resnet_int8"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  { name: "images" data_type: TYPE_UINT8 format: FORMAT_NCHW dims: [ 3, -1, -1 ] }
]
output [
  { name: "scores" data_type: TYPE_FP16 dims: [ 1000 ] label_filename: "classes.txt" }
]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 2500
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 500000 allow_timeout_override: true }
  priority_queue_policy { key: 1 value { max_queue_size: 64 } }
}
instance_group [ { count: 3 kind: KIND_CPU }, { name: "spare" kind: KIND_AUTO } ]
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
model_warmup [ { name: "zeros" batch_size: 4 inputs { key: "images" value { data_type: TYPE_UINT8 dims: [3, 8, 8] zero_data: true } } } ]
metric_tags { key: "team" value: "vision" }
"""

PYTHON_DECOUPLED = """
backend: "python"
max_batch_size: 0
input [ { name: "prompt" data_type: TYPE_STRING dims: [ 1 ] }, { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true } ]
output [ { name: "text" data_type: TYPE_STRING dims: [ -1 ] } ]
model_transaction_policy { decoupled: True }
parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }
instance_group [ { kind: KIND_MODEL } ]
"""

SEQUENCE = """
name: "accumulate"
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
sequence_batching {
  oldest { max_candidate_sequences: 4 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "acc_in" output_name: "acc_out" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state: [ { name: "zero" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } ] } ]
}
"""

ENSEMBLE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "preprocess" model_version: -1 input_map { key: "IN" value: "RAW" } output_map { key: "OUT" value: "pixels" } },
    { model_name: "classifier" model_version: -1 input_map { key: "x" value: "pixels" } output_map { key: "y" value: "LABEL" } }
  ]
}
"""


def test_parse_ort_config_with_batching_policies():
    config = full(ORT_BATCHING, "resnet_int8")
    validate_config(config)
    assert config.backend == "onnxruntime"
    db = config.dynamic_batching
    assert list(db.preferred_batch_size) == [8, 16]
    assert db.priority_queue_policy[1].max_queue_size == 64
    assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.DELAY
    groups = [(g.name, mc.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in config.instance_group]
    assert groups == [("resnet_int8_0", "KIND_CPU", 3), ("spare", "KIND_CPU", 2)]
    assert config.model_warmup[0].inputs["images"].zero_data


def test_parse_python_decoupled_config():
    config = full(PYTHON_DECOUPLED, "generate")
    validate_config(config)
    assert (config.name, config.backend, config.platform) == ("generate", "python", "")
    assert config.default_model_filename == "model.py"
    assert config.parameters["EXECUTION_ENV_PATH"].string_value.startswith("$$TRITON_MODEL_DIRECTORY")
    assert config.input[1].optional and config.model_transaction_policy.decoupled
    group = config.instance_group[0]
    assert (group.name, group.kind, group.count) == ("generate_0", mc.ModelInstanceGroup.KIND_MODEL, 1)
    assert not config.HasField("dynamic_batching")


def test_parse_sequence_config_gets_sequence_defaults():
    config = full(SEQUENCE, "accumulate")
    validate_config(config)
    seq = config.sequence_batching
    assert seq.max_sequence_idle_microseconds == 1_000_000
    assert list(seq.oldest.preferred_batch_size) == [4]
    assert config.platform == "onnxruntime_onnx"
    assert not config.HasField("dynamic_batching"), "a scheduler is already set"


def test_parse_ensemble_gets_no_instances_or_optimization():
    config = full(ENSEMBLE, "pipeline")
    validate_config(config)
    assert not config.instance_group and not config.HasField("optimization")
    assert backend_for(config) == "ensemble" and config.backend == ""
    assert config.version_policy.latest.num_versions == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ('name: "m"\nmax_batch_size: "eight"', "config.pbtxt:2:17:"),
        ('name: "m"\n  bogus_field: 3', "config.pbtxt:2:3: Message type \"inference.ModelConfig\" has no field named"),
        (
            'name: "m"\ninput [\n  { name: "a" data_type: TYPE_FOO dims: [1] },\n  { name: "b" data_type: TYPE_FP32 dims: [1] }\n]',
            "model 'm': input 'a': unknown data type 'TYPE_FOO' (config.pbtxt:3:26)",
        ),
        (
            'name: "m"\noutput [ { name: "o" data_type: TYPE_BAR dims: [1] } ]',
            "model 'm': output 'o': unknown data type 'TYPE_BAR'",
        ),
        ('name: "m"\ninput [ { name: "a" ', "config.pbtxt:"),
        # protobuf raises ValueError, not ParseError, for a value its field cannot hold (fuzzing found it)
        ('name: "m"\ninstance_group [ { kind: 33333333333333333333333 } ]', "config.pbtxt: Value out of range"),
    ],
)
def test_parse_errors_name_model_and_location(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, model="m")
    assert expected in info.value.message
    assert info.value.message.startswith("model 'm': ")
    assert info.value.code == ErrorCode.INVALID_ARG and info.value.http_status == 400


# ---- loading and backend detection ----------------------------------------------------------

@pytest.mark.parametrize(
    "files, backend, platform, filename",
    [
        ({"1/model.onnx": "x"}, "onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ({"1/model.onnx/": ""}, "onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ({"1/model.py": "x"}, "python", "", "model.py"),
        ({"1/model.pt": "x"}, "pytorch", "pytorch_libtorch", "model.pt"),
        ({"1/model.pt2": "x"}, "pytorch", "torch_aoti", "model.pt2"),
        ({"1/model.plan": "x"}, "tensorrt", "tensorrt_plan", "model.plan"),
        ({"1/model.savedmodel/": ""}, "tensorflow", "tensorflow_savedmodel", "model.savedmodel"),
        ({"1/model.graphdef": "x"}, "tensorflow", "tensorflow_graphdef", "model.graphdef"),
        ({"1/model.xml": "x", "1/model.bin": "x"}, "openvino", "", "model.xml"),
        ({"3/model.py": "x", "2/model.onnx": "x"}, "onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ({"1/notes.txt": "x"}, "", "", ""),
    ],
)
def test_autocomplete_detects_backend_from_files(tmp_path, files, backend, platform, filename):
    source = make_model(tmp_path, "m", None, files)
    config = load_config(source, autocomplete=True)
    assert (config.name, config.backend, config.platform, config.default_model_filename) == (
        "m", backend, platform, filename,
    )


@pytest.mark.parametrize(
    "text, backend, platform, filename",
    [
        ('platform: "onnxruntime_onnx"', "onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ('backend: "onnxruntime"', "onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ('platform: "libtorch"', "pytorch", "libtorch", "model.pt"),
        ('platform: "pytorch_libtorch"', "pytorch", "pytorch_libtorch", "model.pt"),
        ('backend: "pytorch"', "pytorch", "pytorch_libtorch", "model.pt"),
        ('platform: "torch_aoti"', "pytorch", "torch_aoti", "model.pt2"),
        ('backend: "tensorrt"', "tensorrt", "tensorrt_plan", "model.plan"),
        ('platform: "tensorrt_plan"', "tensorrt", "tensorrt_plan", "model.plan"),
        ('platform: "tensorflow_savedmodel"', "tensorflow", "tensorflow_savedmodel", "model.savedmodel"),
        ('default_model_filename: "model.graphdef"', "tensorflow", "tensorflow_graphdef", "model.graphdef"),
        ('backend: "python"', "python", "", "model.py"),
        ('default_model_filename: "model.py"', "python", "", "model.py"),
        ('backend: "python" default_model_filename: "serve.py"', "python", "", "serve.py"),
        ('backend: "openvino"', "openvino", "", "model.xml"),
        ('platform: "ensemble"', "", "ensemble", ""),
        ('backend: "vllm"', "vllm", "", ""),
    ],
)
def test_platform_and_backend_fill_each_other(tmp_path, text, backend, platform, filename):
    source = make_model(tmp_path, "m", text, {"1/model.onnx": "x"})
    config = load_config(source)
    assert (config.backend, config.platform, config.default_model_filename) == (backend, platform, filename)


def test_missing_config_without_autocomplete_is_an_error(tmp_path):
    source = make_model(tmp_path, "m", None, {"1/model.onnx": "x"})
    with pytest.raises(ConfigError, match=r"model 'm': no config.pbtxt .* auto-complete is disabled"):
        load_config(source, autocomplete=False)


def test_name_must_match_directory(tmp_path):
    source = make_model(tmp_path, "m", 'name: "other" backend: "python"')
    with pytest.raises(ConfigError, match="unexpected directory name 'm' for model 'other'"):
        load_config(source)


def test_named_config_file_wins_when_present(tmp_path):
    source = make_model(
        tmp_path, "m", 'backend: "python" max_batch_size: 1',
        {"configs/big.pbtxt": 'backend: "python" max_batch_size: 64', "1/model.py": "x"},
    )
    assert load_config(source, config_name="big").max_batch_size == 64
    assert load_config(source, config_name="absent").max_batch_size == 1
    assert load_config(source).max_batch_size == 1


def test_parse_error_in_named_config_reports_its_path(tmp_path):
    source = make_model(tmp_path, "m", 'backend: "python"', {"configs/bad.pbtxt": "max_batch_size: x"})
    with pytest.raises(ConfigError, match=r"model 'm': configs/bad.pbtxt:1:17:"):
        load_config(source, config_name="bad")


# ---- backend completion -------------------------------------------------------------------------

def test_apply_partial_completion_replaces_lists():
    config = full('backend: "python" input [ { name: "old" data_type: TYPE_FP32 dims: [1] } ]', "m")
    completed = json.dumps({
        "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["2", 3]}],
        "output": [{"name": "y", "data_type": "TYPE_INT64", "dims": [-1]}],
        "dynamic_batching": {},
    })
    config = apply_backend_completion(config, completed)
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["x"] and list(config.input[0].dims) == [2, 3]
    assert config.output[0].data_type == mc.TYPE_INT64
    assert config.HasField("dynamic_batching")
    assert config.backend == "python" and config.instance_group, "fields not in the document stay"
    finalize_config(config, autocomplete=True)
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    validate_config(config)


def test_apply_full_completion_round_trips_our_json():
    config = full(ORT_BATCHING, "resnet_int8")
    before = config_to_json(config)
    apply_backend_completion(config, json.dumps(before))
    assert config_to_json(config) == before


def test_apply_empty_completion_changes_nothing():
    config = full('backend: "python"', "m")
    before = config.SerializeToString()
    assert apply_backend_completion(config, "").SerializeToString() == before
    assert apply_backend_completion(config, b"{}").SerializeToString() == before


@pytest.mark.parametrize(
    "document, expected",
    [
        ('{"name": "other"}', "the backend cannot change the model name"),
        ("{not json", "backend returned invalid configuration JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"max_batch_size": "many"}', "failed to parse model configuration JSON"),
        ('{"no_such_field": 1}', "failed to parse model configuration JSON"),
    ],
)
def test_bad_completion_is_a_config_error(document, expected):
    config = full('backend: "python"', "m")
    with pytest.raises(ConfigError, match=expected):
        apply_backend_completion(config, document)


def test_config_from_json_accepts_numbers_strings_and_camel_case():
    config = config_from_json('{"name": "m", "maxBatchSize": 4, "input": [{"name": "a", "dims": ["1", 2]}]}')
    assert config.max_batch_size == 4 and list(config.input[0].dims) == [1, 2]
    with pytest.raises(ConfigError, match="failed to parse model configuration JSON"):
        config_from_json('{"input": [{"dims": ["a"]}]}')
    with pytest.raises(ServerError):
        config_from_json("")


# ---- finalize -------------------------------------------------------------------------------------

def test_finalize_defaults_for_an_ort_model():
    config = full('platform: "onnxruntime_onnx" max_batch_size: 0 input [ { name: "a" data_type: TYPE_FP32 dims: [1] } ]'
                  ' output [ { name: "b" data_type: TYPE_FP32 dims: [1] } ]', "m")
    assert config.version_policy.latest.num_versions == 1
    assert config.optimization.input_pinned_memory.enable and config.optimization.output_pinned_memory.enable
    assert [(g.name, g.kind, g.count) for g in config.instance_group] == [("m", mc.ModelInstanceGroup.KIND_CPU, 2)]


@pytest.mark.parametrize(
    "text, autocomplete, dynamic",
    [
        ('backend: "onnxruntime" max_batch_size: 8', True, True),
        ('backend: "tensorrt" max_batch_size: 2', True, True),
        ('backend: "onnxruntime" max_batch_size: 8', False, False),
        ('backend: "onnxruntime" max_batch_size: 1', True, False),
        ('backend: "python" max_batch_size: 8', True, False),
        ('backend: "pytorch" max_batch_size: 8', True, False),
        ('backend: "onnxruntime" max_batch_size: 8 sequence_batching { }', True, False),
    ],
)
def test_dynamic_batching_turned_on_like_triton_backends(text, autocomplete, dynamic):
    config = full(text, "m", autocomplete=autocomplete)
    assert config.HasField("dynamic_batching") is dynamic
    if dynamic:
        assert list(config.dynamic_batching.preferred_batch_size) == [config.max_batch_size]


def test_finalize_instance_groups():
    kinds = mc.ModelInstanceGroup
    config = full('backend: "python" instance_group [ { count: 2 }, { kind: KIND_CPU }, { name: "g" count: -3 } ]', "m")
    assert [(g.name, g.kind, g.count) for g in config.instance_group] == [
        ("m_0", kinds.KIND_CPU, 2), ("m_1", kinds.KIND_CPU, 1), ("g", kinds.KIND_CPU, 1),
    ]
    with pytest.raises(ConfigError, match="instance group 'm_0' has kind KIND_GPU but no GPUs are available"):
        full('backend: "python" instance_group [ { kind: KIND_GPU } ]', "m")
    config = parse_config_text('backend: "onnxruntime" instance_group [ { kind: KIND_GPU }, { kind: KIND_AUTO } ]', model="m")
    config.name = "m"
    finalize_config(config, autocomplete=False, available_gpus=(1, 0))
    assert [(g.kind, list(g.gpus), g.count) for g in config.instance_group] == [
        (kinds.KIND_GPU, [0, 1], 1), (kinds.KIND_GPU, [0, 1], 1),
    ]
    config = parse_config_text('backend: "onnxruntime" instance_group [ { kind: KIND_AUTO gpus: [3] } ]', model="m")
    config.name = "m"
    finalize_config(config, autocomplete=False, available_gpus=(0,))
    assert config.instance_group[0].kind == kinds.KIND_CPU and not config.instance_group[0].gpus
    assert config.instance_group[0].count == 2


def test_finalize_is_idempotent():
    once = full(ORT_BATCHING, "resnet_int8")
    twice = finalize_config(mc.ModelConfig.FromString(once.SerializeToString()), autocomplete=True)
    assert twice == once


def test_finalize_rejects_negative_default_batch_size():
    with pytest.raises(ConfigError, match="default-max-batch-size"):
        finalize_config(mc.ModelConfig(name="m"), autocomplete=True, default_max_batch_size=-1)


# ---- validation ------------------------------------------------------------------------------------

IO = 'input [ { name: "a" data_type: TYPE_FP32 dims: [ 4 ] } ] output [ { name: "b" data_type: TYPE_FP32 dims: [ 4 ] } ]'


@pytest.mark.parametrize(
    "text, expected",
    [
        ('platform: "unknown_platform"', "unexpected platform type 'unknown_platform'"),
        ("max_batch_size: 1", "must specify 'platform' or 'backend'"),
        ('platform: "tensorrt_plan" backend: "onnxruntime"', "unexpected 'platform' and 'backend' pair"),
        ('backend: "python" max_batch_size: -1', "'max_batch_size' must be non-negative"),
        ('backend: "python" input [ { data_type: TYPE_FP32 dims: [1] } ]', "input: must specify 'name'"),
        ('backend: "python" input [ { name: "a" dims: [1] } ]', "input 'a': must specify 'data_type'"),
        ('backend: "python" input [ { name: "a" data_type: TYPE_FP32 } ]', "input 'a': must specify 'dims'"),
        ('backend: "python" output [ { name: "o" data_type: TYPE_FP32 dims: [2, 0] } ]',
         "output 'o': dimension must be integer >= 1, or -1"),
        ('backend: "python" input [ { name: "a" data_type: TYPE_FP32 dims: [-2] } ]', "input 'a': dimension must be"),
        ('backend: "python" input [ { name: "a" data_type: TYPE_FP32 dims: [1] }, { name: "a" data_type: TYPE_FP32 dims: [1] } ]',
         "input 'a': name is used more than once"),
        ('backend: "python" output [ { name: "o" data_type: TYPE_FP32 dims: [1] }, { name: "o" data_type: TYPE_INT8 dims: [1] } ]',
         "output 'o': name is used more than once"),
        ('backend: "python" input [ { name: "a" data_type: TYPE_FP32 dims: [1] reshape { } } ]',
         "cannot have empty reshape for non-batching model"),
        ('backend: "python" max_batch_size: 2 input [ { name: "a" data_type: TYPE_FP32 dims: [2, 3] reshape { shape: [7] } } ]',
         "input 'a': has different size for dims and reshape"),
        ('backend: "python" max_batch_size: 2 input [ { name: "a" data_type: TYPE_FP32 dims: [2, -1] reshape { shape: [2, -1, -1] } } ]',
         "different number of variable-size dimensions"),
        ('backend: "python" input [ { name: "a" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [1, 2] } ]',
         "NHWC/NCHW require 3 dims"),
        ('backend: "python" input [ { name: "a" data_type: TYPE_INT32 dims: [1] is_shape_tensor: true } ]',
         "shape tensors are only supported for TensorRT"),
        ('backend: "python" output [ { name: "o" data_type: TYPE_FP32 dims: [1] label_filename: "../x.txt" } ]',
         "label_filename must be a file name"),
        ('backend: "python" max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 2, 8 ] }',
         "preferred_batch_size 8 must be <= max_batch_size 4"),
        ('backend: "python" max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 0 ] }',
         "preferred_batch_size must be positive"),
        ('backend: "python" max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 3 }',
         "default_priority_level must be in range [1, 2]"),
        ('backend: "python" max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 1 '
         'priority_queue_policy { key: 5 value { } } }', "priority_queue_policy level 5 must be in range [1, 2]"),
        ('backend: "python" max_batch_size: 4 dynamic_batching { preserve_ordering: true priority_levels: 2 default_priority_level: 1 }',
         "only one priority level is allowed"),
        ('backend: "python" max_batch_size: 4 dynamic_batching { preserve_ordering: true '
         'default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5 } }', "can not have DELAY"),
        ('backend: "python" sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }',
         "CONTROL_SEQUENCE_START must specify exactly one of"),
        ('backend: "python" sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [1] } ] } ] }',
         "'int32_false_true' must have exactly 2 entries"),
        ('backend: "python" sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [0, 1] } ] },'
         ' { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] } ] }',
         "control tensor 'S' is specified for multiple controls"),
        ('backend: "python" sequence_batching { control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ] }',
         "unexpected data type TYPE_FP32 for CONTROL_SEQUENCE_CORRID"),
        ('backend: "python" sequence_batching { direct { minimum_slot_utilization: 1.5 } }', "minimum slot utilization"),
        ('backend: "python" response_cache { enable: true } sequence_batching { }', "does not support sequence batching"),
        ('backend: "python" response_cache { enable: true } model_transaction_policy { decoupled: true }',
         "does not support decoupled models"),
        ('backend: "python" instance_group [ { kind: KIND_CPU gpus: [0] } ]', "has kind KIND_CPU but specifies one or more GPUs"),
        ('backend: "python" instance_group [ { kind: KIND_CPU profile: ["0"] } ]', "only supported for TensorRT"),
        ('backend: "python" instance_group [ { name: "x" }, { name: "x" } ]', "instance group 'x': name is used more than once"),
        ('backend: "python" model_metrics { metric_control [ { metric_identifier { family: "f" } } ] }',
         "must specify 'histogram_options'"),
        ('backend: "python" version_policy { specific { } }', "'specific' must list at least one version"),
        ('backend: "python" batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 source_input: ["zz"] } ]',
         "unknown source input name 'zz'"),
    ],
)
def test_validation_errors_name_model_and_field(text, expected):
    config = full(text, "x")
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert expected in info.value.message
    assert info.value.message.startswith("model 'x': ")


def test_validation_of_unfinalized_groups():
    config = parse_config_text('name: "x" backend: "python" instance_group [ { name: "g" count: 0 kind: KIND_CPU } ]', model="x")
    with pytest.raises(ConfigError, match="instance group 'g': count must be >= 1"):
        validate_config(config)
    config = parse_config_text('name: "x" backend: "python" instance_group [ { name: "g" count: 1 } ]', model="x")
    with pytest.raises(ConfigError, match="KIND_AUTO was not resolved"):
        validate_config(config)


def test_valid_models_with_dynamic_batching_and_no_batch_size():
    # Triton allows the dynamic batcher on a non-batching model (for its queue policies).
    config = full('backend: "python" max_batch_size: 0 dynamic_batching { max_queue_delay_microseconds: 100 } ' + IO, "x")
    validate_config(config)
    assert not config.dynamic_batching.preferred_batch_size


def ensemble(steps: str, inputs=("IN",), outputs=("OUT",), extra: str = "") -> mc.ModelConfig:
    ios = " ".join(f'input {{ name: "{n}" data_type: TYPE_FP32 dims: [1] }}' for n in inputs)
    ios += " " + " ".join(f'output {{ name: "{n}" data_type: TYPE_FP32 dims: [1] }}' for n in outputs)
    return full(f'platform: "ensemble" {ios} {extra} ensemble_scheduling {{ {steps} }}', "ens")


def step(model: str, ins: dict[str, str], outs: dict[str, str]) -> str:
    imap = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in ins.items())
    omap = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outs.items())
    return f'step {{ model_name: "{model}" {imap} {omap} }}'


@pytest.mark.parametrize(
    "config, expected",
    [
        (lambda: ensemble(""), "must specify 'step'"),
        (lambda: ensemble(step("a", {"x": "IN"}, {}) ), "step 0: must specify 'output_map'"),
        (lambda: ensemble(step("a", {}, {"y": "OUT"})), "step 0: must specify 'input_map'"),
        (lambda: ensemble(step("", {"x": "IN"}, {"y": "OUT"})), "step 0: must specify 'model_name'"),
        (lambda: ensemble(step("a", {"x": "IN"}, {"y": "OUT"}) + step("b", {"x": "IN"}, {"y": "OUT"})),
         "ensemble tensor 'OUT' can appear in an output map only once"),
        (lambda: ensemble(step("a", {"x": "IN", "z": "ghost"}, {"y": "OUT"})),
         "reads ensemble tensor 'ghost', which is neither an ensemble input nor any step's output"),
        (lambda: ensemble(step("a", {"x": "IN"}, {"y": "t1"})), "ensemble output 'OUT' is not written by any step"),
        (lambda: ensemble(step("a", {"x": "IN"}, {"y": "OUT", "z": "spare"})),
         "ensemble tensor 'spare' (written by step 0) is unused"),
        (lambda: ensemble(step("a", {"x": "IN"}, {"y": "OUT"}), inputs=("IN", "IDLE")), "ensemble input 'IDLE' is not used"),
        (lambda: ensemble(step("a", {"x": "IN", "w": "t2"}, {"y": "t1", "v": "OUT"}) + step("b", {"x": "t1"}, {"y": "t2"})),
         "steps form a cycle"),
        (lambda: ensemble(step("a", {"x": "IN"}, {"y": "OUT"}), extra="instance_group [ { count: 1 } ]"),
         "instance_group should not be specified for an ensemble"),
        (lambda: ensemble(step("a", {"x": "IN"}, {"y": "OUT"}), extra='model_warmup [ { name: "w" } ]'),
         "model_warmup can not be specified"),
        (lambda: full('platform: "ensemble" ' + IO, "ens"), "ensemble_scheduling must be set"),
        (lambda: full('backend: "python" ensemble_scheduling { }', "ens"), "cannot be set for a model whose platform"),
        (lambda: full('platform: "ensemble" backend: "python" ensemble_scheduling { }', "ens"), "empty backend"),
    ],
)
def test_ensemble_validation(config, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(config())
    assert expected in info.value.message


def test_valid_diamond_ensemble():
    steps = (
        step("split", {"x": "IN"}, {"l": "left", "r": "right"})
        + step("f", {"x": "left"}, {"y": "left2"})
        + step("g", {"x": "right"}, {"y": "right2"})
        + step("join", {"a": "left2", "b": "right2"}, {"y": "OUT"})
    )
    config = ensemble(steps)
    before = config.SerializeToString()
    assert validate_config(config) is None
    assert config.SerializeToString() == before  # validation only reads the config
    # The same diamond without its right branch step: the join reads a tensor nobody writes.
    one_armed = steps.replace(step("g", {"x": "right"}, {"y": "right2"}), "")
    with pytest.raises(ConfigError) as info:
        validate_config(ensemble(one_armed))
    assert "reads ensemble tensor 'right2', which is neither" in info.value.message


# ---- JSON --------------------------------------------------------------------------------------

def test_config_json_matches_the_triton_quick_start_document(tmp_path):
    # No config.pbtxt: what the ORT backend completes for Triton's densenet_onnx, then core defaults.
    source = make_model(tmp_path, "densenet_onnx", None, {"1/model.onnx": "x"})
    config = load_config(source)
    completed = {
        "max_batch_size": 0,
        "input": [{"name": "data_0", "data_type": "TYPE_FP32", "dims": [1, 3, 224, 224]}],
        "output": [{"name": "fc6_1", "data_type": "TYPE_FP32", "dims": [1, 1000, 1, 1]}],
    }
    config = apply_backend_completion(config, json.dumps(completed))
    finalize_config(config, autocomplete=True)
    validate_config(config)
    rendered = json.dumps(config_to_json(config), separators=(",", ":"))
    assert rendered == TRITON_DENSENET_CONFIG


def test_config_json_agrees_with_protobuf_except_64_bit_integers():
    config = full(ORT_BATCHING, "resnet_int8")
    config.parameters["threads"].string_value = "auto"
    config.cc_model_filenames["8.6"] = "model_sm86.plan"
    config.version_policy.specific.versions.extend([1, 3])
    config.instance_group[0].secondary_devices.add(device_id=7)
    ours = config_to_json(config)
    theirs = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )

    def numbers(value):
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        return value

    assert ours == numbers(theirs)
    assert ours["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert ours["dynamic_batching"]["max_queue_delay_microseconds"] == 2500
    assert ours["dynamic_batching"]["priority_queue_policy"]["1"]["max_queue_size"] == 64
    assert ours["input"][0]["dims"] == [3, -1, -1]
    assert list(ours)[:6] == ["name", "platform", "backend", "runtime", "version_policy", "max_batch_size"]


def test_float_fields_render_shortest():
    config = full('backend: "python" sequence_batching { direct { minimum_slot_utilization: 0.1 } }', "m")
    assert config_to_json(config)["sequence_batching"]["direct"]["minimum_slot_utilization"] == 0.1


def test_model_metadata():
    config = full('backend: "python" max_batch_size: 8 input [ { name: "t" data_type: TYPE_STRING dims: [ -1 ] } ]'
                  ' output [ { name: "o" data_type: TYPE_BF16 dims: [ 2, 3 ] } ]', "m")
    assert model_metadata(config, ["1", "3"]) == {
        "name": "m", "versions": ["1", "3"], "platform": "python",
        "inputs": [{"name": "t", "datatype": "BYTES", "shape": [-1, -1]}],
        "outputs": [{"name": "o", "datatype": "BF16", "shape": [-1, 2, 3]}],
    }
    ort = full('platform: "onnxruntime_onnx" ' + IO, "n")
    meta = model_metadata(ort, [])
    assert meta["platform"] == "onnxruntime_onnx" and meta["inputs"][0]["shape"] == [4]
