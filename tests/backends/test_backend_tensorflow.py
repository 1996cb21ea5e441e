"""The tensorflow backend: a small CNN written as a tf.Module and saved as a SavedModel here,
served with auto-complete by a real server and compared with TensorFlow's own output.

Skipped unless TensorFlow is installed: `tensorflow-cpu` unpacks to about 1.3 GB, too much for the
test extra, so CI does not install it (install it by hand to run these).
Tolerance: rtol 1e-4, atol 1e-5 (same graph; thread counts may differ between the two runs).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from support.framework_helpers import hide_package, infer_concurrently, infer_grpc, infer_http, load_error  # noqa: E402
from support.server_process import ServerProcess  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


class SmallCNN(tf.Module):
    """conv(3->8) -> relu -> global mean -> matmul(8->10), plus a string pass-through (upper-cased)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 8], seed=[1, 2]))
        self.weights = tf.Variable(tf.random.stateless_normal([8, 10], seed=[3, 4]))

    def _features(self, image):
        return tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(image, self.kernel, 1, "SAME")), axis=[1, 2])

    @tf.function(input_signature=[
        tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image"),
        tf.TensorSpec([None], tf.string, name="label"),
    ])
    def serve(self, image, label):
        features = self._features(image)
        return {"logits": tf.matmul(features, self.weights), "features": features, "label_upper": tf.strings.upper(label)}

    @tf.function(input_signature=[tf.TensorSpec([2, 16, 16, 3], tf.float32, name="image")])
    def predict(self, image):
        return {"logits": tf.matmul(self._features(image), self.weights)}


@pytest.fixture(scope="module")
def tf_repo(tmp_path_factory) -> tuple[Path, SmallCNN]:
    repo = tmp_path_factory.mktemp("tf_repo")
    module = SmallCNN()
    signatures = {"serving_default": module.serve, "predict": module.predict}
    tf.saved_model.save(module, str(repo / "cnn_tf" / "1" / "model.savedmodel"), signatures=signatures)
    tf.saved_model.save(module, str(repo / "cnn_tf_predict" / "1" / "model.savedmodel"), signatures=signatures)
    (repo / "cnn_tf" / "config.pbtxt").write_text('instance_group [ { count: 1 kind: KIND_CPU } ]\n')
    (repo / "cnn_tf_predict" / "config.pbtxt").write_text(
        'platform: "tensorflow_savedmodel"\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\n'
        'parameters { key: "TF_SIGNATURE_DEF" value { string_value: "predict" } }\n'
        'parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "1" } }\n'
    )
    return repo, module


def _image(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 16, 16, 3), dtype=np.float32)


def _labels(rows: int) -> np.ndarray:
    return np.array([[f"row-{i}".encode()] for i in range(rows)], dtype=np.object_)


def test_savedmodel_served_matches_tensorflow(tf_repo, leak_check):
    import tritonclient.http as httpclient

    repo, module = tf_repo
    with ServerProcess(repo) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            config = client.get_model_config("cnn_tf")
            predict_config = client.get_model_config("cnn_tf_predict")
        finally:
            client.close()
        assert config["platform"] == "tensorflow_savedmodel" and config["max_batch_size"] == 4
        inputs = {i["name"]: (i["data_type"], i["dims"]) for i in config["input"]}
        assert inputs == {"image": ("TYPE_FP32", [16, 16, 3]), "label": ("TYPE_STRING", [1])}
        assert predict_config["max_batch_size"] == 0
        assert [o["name"] for o in predict_config["output"]] == ["logits"]

        image, labels = _image(3, 1), _labels(3)
        want = module.serve(tf.constant(image), tf.constant(labels.reshape(-1)))
        for infer, url in ((infer_http, server.http_url), (infer_grpc, server.grpc_url)):
            got = infer(url, "cnn_tf", {"image": image, "label": labels}, ["logits", "features", "label_upper"])
            np.testing.assert_allclose(got["logits"], want["logits"].numpy(), rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(got["features"], want["features"].numpy(), rtol=RTOL, atol=ATOL)
            assert got["label_upper"].reshape(-1).tolist() == [b"ROW-0", b"ROW-1", b"ROW-2"]

        batches = [(_image(rows, 30 + rows), _labels(rows)) for rows in (2, 1, 3)]
        results = infer_concurrently(
            server.http_url, "cnn_tf", [{"image": image, "label": labels} for image, labels in batches], ["logits"]
        )
        for (image, labels), got in zip(batches, results):
            want = module.serve(tf.constant(image), tf.constant(labels.reshape(-1)))["logits"].numpy()
            np.testing.assert_allclose(got["logits"], want, rtol=RTOL, atol=ATOL)

        image = _image(2, 4)
        got = infer_http(server.http_url, "cnn_tf_predict", {"image": image}, ["logits"])
        np.testing.assert_allclose(got["logits"], module.predict(tf.constant(image))["logits"].numpy(), rtol=RTOL, atol=ATOL)


def test_unknown_signature_and_missing_tensorflow(tmp_path, monkeypatch, tf_repo, leak_check):
    repo, _ = tf_repo
    config = repo / "cnn_tf_predict" / "config.pbtxt"
    original = config.read_text()
    bad = tmp_path / "repo"
    (bad / "nosig").mkdir(parents=True)
    (bad / "nosig" / "config.pbtxt").write_text(original.replace('"predict"', '"nope"'))
    (bad / "nosig" / "1").symlink_to(repo / "cnn_tf_predict" / "1")
    with ServerProcess(bad, "--model-control-mode=explicit") as server:
        message = load_error(server.http_url, "nosig")
    assert "has no signature 'nope'; it has: predict, serving_default" in message

    hide_package(monkeypatch, tmp_path, "tensorflow")
    with ServerProcess(repo, "--model-control-mode=explicit") as server:
        message = load_error(server.http_url, "cnn_tf")
    assert "pip install 'tritonpy[tensorflow]'" in message
