"""The openvino backend: the small CNN converted to OpenVINO IR here (openvino.convert_model from the
torch module), served by a real server with auto-complete, compared with OpenVINO's own output.

Tolerance: rtol 1e-4, atol 1e-5 against OpenVINO in-process with the same f32 precision hint
(thread counts may differ, which can reorder float reductions).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
torch = pytest.importorskip("torch")

from support.framework_helpers import hide_package, infer_concurrently, infer_grpc, infer_http, load_error  # noqa: E402
from support.server_process import ServerProcess  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, image: torch.Tensor):
        features = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return self.fc(features), features


def _convert(batch: int) -> object:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    converted = ov.convert_model(
        model, example_input=torch.randn(2, 3, 16, 16), input=[("image", ov.PartialShape([batch, 3, 16, 16]), ov.Type.f32)]
    )
    converted.outputs[0].get_tensor().set_names({"logits"})
    converted.outputs[1].get_tensor().set_names({"features"})
    return converted


@pytest.fixture(scope="module")
def ov_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("ov_repo")
    # Dynamic batch, no config.pbtxt at all: detection (model.xml) and auto-complete do everything.
    ov.save_model(_convert(-1), str(repo / "cnn_ov" / "1" / "model.xml"))
    # Fixed batch of 2: not batchable, full dims; parameters set.
    ov.save_model(_convert(2), str(repo / "cnn_ov_fixed" / "1" / "model.xml"))
    (repo / "cnn_ov_fixed" / "config.pbtxt").write_text(
        'backend: "openvino"\n'
        'parameters { key: "INFERENCE_NUM_THREADS" value { string_value: "1" } }\n'
        'parameters { key: "PERFORMANCE_HINT" value { string_value: "LATENCY" } }\n'
    )
    return repo


def _reference(repo: Path, name: str, image: np.ndarray) -> dict[str, np.ndarray]:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(repo / name / "1" / "model.xml")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled.create_infer_request().infer({"image": image})
    return {"logits": np.array(result["logits"]), "features": np.array(result["features"])}


def _image(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 16, 16), dtype=np.float32)


def test_auto_completed_model_served_matches_openvino(ov_repo, leak_check):
    import tritonclient.http as httpclient

    with ServerProcess(ov_repo) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            config = client.get_model_config("cnn_ov")
            fixed = client.get_model_config("cnn_ov_fixed")
        finally:
            client.close()
        assert config["max_batch_size"] == 4
        assert "dynamic_batching" in config
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("image", "TYPE_FP32", [3, 16, 16])]
        assert sorted((o["name"], o["dims"][0]) for o in config["output"]) == [("features", 8), ("logits", 10)]
        assert fixed["max_batch_size"] == 0
        assert fixed["input"][0]["dims"] == [2, 3, 16, 16]

        image = _image(3, 1)
        want = _reference(ov_repo, "cnn_ov", image)
        for infer, url in ((infer_http, server.http_url), (infer_grpc, server.grpc_url)):
            got = infer(url, "cnn_ov", {"image": image}, ["logits", "features"])
            for name in ("logits", "features"):
                np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL)

        images = [_image(rows, 20 + rows) for rows in (1, 2, 1, 3)]
        results = infer_concurrently(server.http_url, "cnn_ov", [{"image": i} for i in images], ["logits"])
        for image, got in zip(images, results):
            np.testing.assert_allclose(got["logits"], _reference(ov_repo, "cnn_ov", image)["logits"], rtol=RTOL, atol=ATOL)

        image = _image(2, 2)
        got = infer_http(server.http_url, "cnn_ov_fixed", {"image": image}, ["features"])
        np.testing.assert_allclose(got["features"], _reference(ov_repo, "cnn_ov_fixed", image)["features"], rtol=RTOL, atol=ATOL)


def test_wrong_input_shape_fails_only_that_request(ov_repo, leak_check):
    from tritonclient.utils import InferenceServerException

    with ServerProcess(ov_repo) as server:
        with pytest.raises(InferenceServerException):
            infer_http(server.http_url, "cnn_ov", {"image": np.zeros((1, 3, 8, 8), np.float32)}, ["logits"])
        image = _image(1, 5)
        got = infer_http(server.http_url, "cnn_ov", {"image": image}, ["logits"])
        np.testing.assert_allclose(got["logits"], _reference(ov_repo, "cnn_ov", image)["logits"], rtol=RTOL, atol=ATOL)


def test_missing_openvino_makes_the_model_unavailable_naming_the_extra(tmp_path, monkeypatch, ov_repo, leak_check):
    hide_package(monkeypatch, tmp_path, "openvino")
    with ServerProcess(ov_repo, "--model-control-mode=explicit") as server:
        message = load_error(server.http_url, "cnn_ov")
    assert "failed to load model 'cnn_ov'" in message
    assert "pip install 'tritonpy[openvino]'" in message


def test_unreadable_model_fails_the_load(tmp_path, leak_check):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.xml").write_text("<not-ir/>")
    with ServerProcess(tmp_path, "--model-control-mode=explicit") as server:
        assert "openvino cannot read 'model.xml'" in load_error(server.http_url, "broken")
