"""The python backend in a real worker process: Triton Python-backend models run unchanged."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from tritonpy.proto.messages import ErrorCode
from support.worker_harness import WorkerHarness, write_model

ADD_SUB = textwrap.dedent(
    '''
    import json
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.args = args
            config = json.loads(args["model_config"])
            out0 = pb_utils.get_output_config_by_name(config, "OUTPUT0")
            self.out0_dtype = pb_utils.triton_string_to_numpy(out0["data_type"])
            pb_utils.Logger.log_info("add_sub initialized")
            pb_utils.Logger.log_verbose("verbose detail")
            print("printed by the model")

        def execute(self, requests):
            responses = []
            for request in requests:
                in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.out0_dtype))
                out1 = pb_utils.Tensor("OUTPUT1", in0 - in1)
                responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
            return responses

        def finalize(self):
            pb_utils.Logger.log_info("add_sub finalized")
    '''
)

ADD_SUB_CONFIG = {
    "name": "add_sub",
    "backend": "python",
    "input": [
        {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["4"]},
        {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": ["4"]},
    ],
    "output": [
        {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": ["4"]},
        {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": ["4"]},
    ],
}


def _io_config(name: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> dict:
    return {
        "name": name,
        "backend": "python",
        "input": [{"name": n, "data_type": t, "dims": [-1]} for n, t in inputs],
        "output": [{"name": n, "data_type": t, "dims": [-1]} for n, t in outputs],
    }


@pytest.fixture
def add_sub(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "add_sub", files={"model.py": ADD_SUB})
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=ADD_SUB_CONFIG) as h:
        h.start()
        done = h.init()
        assert done.ok, done.error
        yield h


def test_add_sub_batch_of_two(add_sub):
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    reqs = [add_sub.request({"INPUT0": a, "INPUT1": b}), add_sub.request({"INPUT0": b, "INPUT1": a})]
    done = add_sub.execute(reqs)
    assert done.error is None and len(done.responses) == 2
    first, second = (add_sub.outputs(r) for r in done.responses)
    np.testing.assert_array_equal(first["OUTPUT0"], a + b)
    np.testing.assert_array_equal(first["OUTPUT1"], a - b)
    np.testing.assert_array_equal(second["OUTPUT1"], b - a)
    assert done.compute_infer_ns > 0 and done.compute_input_ns > 0 and done.compute_output_ns > 0
    add_sub.release(done.batch_id)
    assert add_sub.finalize() == 0


def test_requested_output_subset(add_sub):
    a = np.ones(4, dtype=np.float32)
    out = add_sub.infer({"INPUT0": a, "INPUT1": a}, outputs=["OUTPUT1"])
    assert list(out) == ["OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT1"], np.zeros(4, np.float32))


def test_model_logging_goes_to_stderr_in_triton_format(add_sub):
    assert add_sub.finalize() == 0
    log = add_sub.stderr_text()
    assert '] "add_sub initialized"' in log
    assert "model.py:" in log
    assert '] "add_sub finalized"' in log
    assert "verbose detail" not in log  # --log-verbose 0
    assert "printed by the model" in log  # stdout is redirected to the captured stderr


def test_verbose_logging_when_enabled(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "add_sub", files={"model.py": ADD_SUB})
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=ADD_SUB_CONFIG) as h:
        h.start()
        assert h.init(log_verbose=1).ok
        assert h.finalize() == 0
        assert '] "verbose detail"' in h.stderr_text()


ARGS_MODEL = textwrap.dedent(
    '''
    import json
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.args = args

        def execute(self, requests):
            out = []
            for r in requests:
                info = dict(self.args, request_id=r.request_id(), parameters=r.parameters(),
                            requested=r.requested_output_names(), correlation_id=r.correlation_id())
                data = np.array([json.dumps(info).encode()], dtype=np.object_)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("ARGS", data)], parameters={"seen": True}))
            return out
    '''
)


def test_initialize_args_and_request_fields(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "args_model", files={"model.py": ARGS_MODEL})
    config = _io_config("args_model", [("IN", "TYPE_INT32")], [("ARGS", "TYPE_STRING")])
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config, instance_name="args_model_0") as h:
        h.start()
        assert h.init().ok
        done = h.execute([h.request({"IN": np.zeros(1, np.int32)}, request_id="r-7", parameters={"k": "v"})])
        response = done.responses[0]
        info = json.loads(h.outputs(response)["ARGS"][0])
        h.release(done.batch_id)
        assert response.parameters == {"seen": True}
    assert info["model_name"] == "args_model"
    assert info["model_version"] == "1"
    assert info["model_instance_kind"] == "CPU"
    assert info["model_instance_device_id"] == "0"
    assert info["model_instance_name"] == "args_model_0"
    assert info["model_repository"] == str(model_dir)
    assert json.loads(info["model_config"])["input"][0]["dims"] == [-1]  # int64 fields as numbers
    assert info["request_id"] == "r-7"
    assert json.loads(info["parameters"]) == {"k": "v"}
    assert info["requested"] == ["ARGS"]  # none requested: every configured output


ASYNC_MODEL = textwrap.dedent(
    '''
    import asyncio
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        async def initialize(self, args):
            self.lock = asyncio.Lock()  # bound to the worker's persistent loop

        async def execute(self, requests):
            async with self.lock:
                await asyncio.sleep(0.01)
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 2)])
                    for r in requests]

        async def is_ready(self):
            return True
    '''
)


def test_async_execute_runs_on_a_persistent_loop(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "async_model", files={"model.py": ASYNC_MODEL})
    config = _io_config("async_model", [("IN", "TYPE_INT64")], [("OUT", "TYPE_INT64")])
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config) as h:
        h.start()
        assert h.init().ok
        for _ in range(2):  # the second batch reuses the lock created on the same loop
            out = h.infer({"IN": np.arange(3, dtype=np.int64)})
            np.testing.assert_array_equal(out["OUT"], [0, 2, 4])
        assert h.is_ready() is True
        assert h.finalize() == 0


ERRORS_MODEL = textwrap.dedent(
    '''
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            mode = pb_utils.get_input_tensor_by_name(requests[0], "MODE").as_numpy()[0]
            if mode == 1:
                raise ValueError("boom from the model")
            if mode == 2:
                raise pb_utils.TritonModelException("model exception text")
            if mode == 3:
                raise pb_utils.TritonError("unsupported thing", pb_utils.TritonError.UNSUPPORTED)
            if mode == 4:
                return []
            if mode == 5:
                requests[0].exec()
            if mode == 6:
                requests[0].get_response_sender().send(None, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            out = []
            for r in requests:
                if r.request_id() == "bad":
                    out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("bad request", pb_utils.TritonError.INVALID_ARG)))
                else:
                    out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], dtype=np.int32))]))
            return out
    '''
)


@pytest.fixture
def errors_model(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "errors", files={"model.py": ERRORS_MODEL})
    config = _io_config("errors", [("MODE", "TYPE_INT32")], [("OUT", "TYPE_INT32")])
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config) as h:
        h.start()
        assert h.init().ok
        yield h


def _run_mode(h: WorkerHarness, mode: int, ids=("a",)):
    reqs = [h.request({"MODE": np.array([mode], np.int32)}, request_id=i) for i in ids]
    done = h.execute(reqs)
    h.release(done.batch_id)
    return done


def test_per_request_error_fails_only_that_request(errors_model):
    done = _run_mode(errors_model, 0, ids=("a", "bad", "c"))
    assert done.error is None
    ok_a, bad, ok_c = done.responses
    assert bad.error is not None and bad.error.code == ErrorCode.INVALID_ARG and bad.error.message == "bad request"
    assert errors_model.outputs(ok_a)["OUT"].tolist() == [1]
    assert errors_model.outputs(ok_c)["OUT"].tolist() == [1]


def test_exception_fails_whole_batch_with_traceback(errors_model):
    done = _run_mode(errors_model, 1, ids=("a", "b"))
    assert done.responses == []
    assert done.error.code == ErrorCode.INTERNAL
    assert "ValueError: boom from the model" in done.error.message
    assert "model.py(" in done.error.message
    # the worker keeps serving afterwards
    assert _run_mode(errors_model, 0).error is None


@pytest.mark.parametrize(
    "mode,code,text",
    [
        (2, ErrorCode.INTERNAL, "model exception text"),
        (3, ErrorCode.UNSUPPORTED, "unsupported thing"),
        (4, ErrorCode.INTERNAL, "returned 0 responses for 1 requests"),
        (5, ErrorCode.INTERNAL, "BLS"),
        (6, ErrorCode.INTERNAL, "decoupled"),
    ],
)
def test_whole_batch_errors_keep_codes(errors_model, mode, code, text):
    done = _run_mode(errors_model, mode)
    assert done.responses == []
    assert done.error.code == code
    assert text in done.error.message


STRINGS_MODEL = textwrap.dedent(
    '''
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for r in requests:
                words = pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy()
                upper = np.array([w.upper() for w in words.reshape(-1)], dtype=np.object_).reshape(words.shape)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("UPPER", upper)]))
            return out
    '''
)


def test_string_tensors(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "strings", files={"model.py": STRINGS_MODEL})
    config = _io_config("strings", [("TEXT", "TYPE_STRING")], [("UPPER", "TYPE_STRING")])
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config) as h:
        h.start()
        assert h.init().ok
        words = np.array([[b"hello", b"w\x00rld"], [b"", b"\xc3\xa9t\xc3\xa9"]], dtype=np.object_)
        big = np.array([b"x" * 10000], dtype=np.object_)  # goes through shared memory, not inline
        out = h.infer({"TEXT": words})["UPPER"]
        assert out.shape == (2, 2)
        assert out.tolist() == [[b"HELLO", b"W\x00RLD"], [b"", b"\xc3\xa9T\xc3\xa9"]]
        assert h.infer({"TEXT": big})["UPPER"][0] == b"X" * 10000
        assert h.finalize() == 0


READY_MODEL = textwrap.dedent(
    '''
    import os
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.flag = os.path.join(args["model_repository"], "ready.flag")

        def execute(self, requests):
            return [pb_utils.InferenceResponse([]) for _ in requests]

        def is_ready(self):
            if os.path.exists(self.flag + ".raise"):
                raise RuntimeError("cannot tell")
            return os.path.exists(self.flag)
    '''
)


def test_is_ready_calls_the_model(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "ready", files={"model.py": READY_MODEL})
    config = _io_config("ready", [("IN", "TYPE_INT32")], [])
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config) as h:
        h.start()
        assert h.init().ok
        assert h.is_ready() is False
        (model_dir / "ready.flag").write_text("")
        assert h.is_ready() is True
        (model_dir / "ready.flag.raise").write_text("")
        assert h.is_ready() is False  # an exception means not ready
        assert h.finalize() == 0


AUTOCOMPLETE_MODEL = textwrap.dedent(
    '''
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        @staticmethod
        def auto_complete_config(auto_complete_model_config):
            auto_complete_model_config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [3]})
            auto_complete_model_config.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [3]})
            auto_complete_model_config.set_max_batch_size(8)
            auto_complete_model_config.set_dynamic_batching()
            return auto_complete_model_config

        def initialize(self, args):
            import json
            assert json.loads(args["model_config"])["max_batch_size"] == 8

        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
                    for r in requests]
    '''
)


def test_auto_complete_config(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "auto", files={"model.py": AUTOCOMPLETE_MODEL})
    config = {"name": "auto", "backend": "python", "input": [{"name": "IN", "dims": ["3"]}]}
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config, autocomplete=True) as h:
        h.start()
        done = h.init()
        assert done.ok, done.error
        completed = json.loads(done.config_json)
        assert completed["max_batch_size"] == 8
        assert completed["dynamic_batching"] == {}
        assert completed["input"] == [{"name": "IN", "dims": [3], "data_type": "TYPE_FP32"}]
        assert completed["output"] == [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [3]}]
        assert h.finalize() == 0


def test_auto_complete_conflict_fails_the_load(tmp_path, leak_check):
    model_dir = write_model(tmp_path, "auto", files={"model.py": AUTOCOMPLETE_MODEL})
    config = {"name": "auto", "input": [{"name": "IN", "data_type": "TYPE_INT8", "dims": [3]}]}
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config, autocomplete=True) as h:
        h.start()
        done = h.init()
        assert not done.ok
        assert "configuration expects datatype TYPE_INT8 for input 'IN', model provides TYPE_FP32" in done.error
        assert h.wait_exit() == 0


@pytest.mark.parametrize(
    "files,expected",
    [
        ({"model.py": "import not_a_module_anywhere\n"}, ["ModuleNotFoundError", "not_a_module_anywhere", "model.py(1)"]),
        ({"other.py": "x = 1\n"}, ["unable to find the Python model file", "model.py"]),
        ({"model.py": "class Nope:\n    pass\n"}, ["does not define class TritonPythonModel"]),
        (
            {"model.py": "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('no weights')\n"},
            ["RuntimeError: no weights", "initialize"],
        ),
        ({"model.py": "class TritonPythonModel:\n    pass\n"}, ["has no execute() method"]),
    ],
    ids=["import-error", "missing-file", "no-class", "initialize-raises", "no-execute"],
)
def test_init_failures_report_the_reason_and_exit(tmp_path, leak_check, files, expected):
    model_dir = write_model(tmp_path, "broken", files=files)
    config = _io_config("broken", [("IN", "TYPE_FP32")], [("OUT", "TYPE_FP32")])
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config) as h:
        h.start()
        done = h.init()
        assert not done.ok
        assert done.error.startswith("failed to load model 'broken': ")
        for text in expected:
            assert text in done.error
        assert h.wait_exit() == 0


FINALIZE_MODEL = textwrap.dedent(
    '''
    import os
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.marker = os.path.join(args["model_repository"], "finalized")

        def execute(self, requests):
            big = np.ones(100000, dtype=np.float32)  # lands in the worker's shared memory
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", big)]) for _ in requests]

        def finalize(self):
            open(self.marker, "w").close()
    '''
)


def test_sigterm_finalizes_and_unlinks_segments(tmp_path, leak_check):
    import os
    import signal
    import time

    model_dir = write_model(tmp_path, "fin", files={"model.py": FINALIZE_MODEL})
    config = _io_config("fin", [("IN", "TYPE_FP32")], [("OUT", "TYPE_FP32")])
    with WorkerHarness(tmp_path, model_dir=model_dir, backend="python", config=config) as h:
        h.start()
        assert h.init().ok
        done = h.execute([h.request({"IN": np.zeros(1, np.float32)})])  # not released on purpose
        segment = done.responses[0].outputs[0].segment
        assert os.path.exists("/dev/shm/" + segment.lstrip("/"))
        h.proc.send_signal(signal.SIGTERM)
        assert h.wait_exit() == 0
        assert (model_dir / "finalized").exists()
        deadline = time.monotonic() + 5
        while os.path.exists("/dev/shm/" + segment.lstrip("/")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists("/dev/shm/" + segment.lstrip("/"))
