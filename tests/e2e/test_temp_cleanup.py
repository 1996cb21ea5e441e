"""A test server leaves nothing in the temp folder: no log file, no runtime or socket folder
(issue 19, item 13)."""
from __future__ import annotations

import textwrap

import numpy as np
import tritonclient.http as httpclient

from support.server_process import ServerProcess

MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "IN")]) for r in requests]
"""


def test_server_process_leaves_no_files(tmp_path, leak_check):
    d = tmp_path / "echo"
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\n'
        'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
    )
    (d / "1" / "model.py").write_text(textwrap.dedent(MODEL))
    with ServerProcess(tmp_path) as server:
        inp = httpclient.InferInput("IN", [1], "INT32")
        inp.set_data_from_numpy(np.array([5], dtype=np.int32))
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.infer("echo", [inp]).as_numpy("IN").tolist() == [5]
        client.close()
        folder = server.temp_dir
        runtime = [p for p in folder.iterdir() if p.is_dir()]
        assert runtime, "the server's runtime folder should sit in the test server's own temp folder"
    assert not folder.exists()
    assert "Started HTTPService" in server.output()
