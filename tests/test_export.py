"""The export path: TF Serving layout, warmup requests, reload parity, atomic write."""

import os

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.export import serving, warmup
from tests import tiny_task


@pytest.fixture(scope="module")
def tiny():
    config = tiny_task.get_config()
    task = tiny_task.TinyTask(config)
    return task, task.build_models()


def test_export_layout_and_reload_parity(tmp_path, tiny):
    task, models = tiny
    path = serving.export_saved_model(task, models, str(tmp_path / "tiny"), 7)
    assert path == str(tmp_path / "tiny" / "7")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    assert sorted(os.listdir(tmp_path / "tiny")) == ["7"]  # no temp folder left behind
    loaded = tf.saved_model.load(path)
    x = tiny_task._data(99, 5)[0]
    got = loaded.signatures["serving_default"](features=tf.constant(x))
    want = task.logits(models, x, training=False).numpy()
    np.testing.assert_allclose(got["logits"].numpy(), want, atol=1e-5)
    np.testing.assert_array_equal(got["label"].numpy(), np.argmax(want, -1))


def test_warmup_file_round_trip(tmp_path, tiny):
    task, models = tiny
    path = serving.export_saved_model(task, models, str(tmp_path / "m"), 1)
    requests = warmup.read_warmup_requests(os.path.join(path, serving.WARMUP_FILE))
    assert len(requests) == 1
    req = requests[0]
    assert req["model"] == "tiny" and req["signature"] == "serving_default"
    np.testing.assert_array_equal(
        req["inputs"]["features"], task.warmup_inputs()["serving_default"]["features"]
    )


def test_warmup_bytes_parse_with_official_protos(tmp_path):
    """Cross-check the hand-written wire format with tensorflow-serving-api's own protos."""
    prediction_log_pb2 = pytest.importorskip(
        "tensorflow_serving.apis.prediction_log_pb2",
        reason="tensorflow-serving-api not installed (quickstart.sh installs it with --no-deps)",
    )
    data = warmup.predict_log_bytes(
        "m",
        "describe",
        {
            "image": np.array([b"\x89PNG..."], dtype=object),
            "points": np.zeros((1, 3, 2), np.float32),
        },
    )
    log = prediction_log_pb2.PredictionLog()
    log.ParseFromString(data)
    request = log.predict_log.request
    assert request.model_spec.name == "m" and request.model_spec.signature_name == "describe"
    assert tf.make_ndarray(request.inputs["points"]).shape == (1, 3, 2)
    assert tf.make_ndarray(request.inputs["image"])[0] == b"\x89PNG..."


def test_existing_version_is_not_overwritten(tmp_path, tiny):
    task, models = tiny
    base = str(tmp_path / "m")
    serving.export_saved_model(task, models, base, 3)
    marker = os.path.join(base, "3", "marker")
    open(marker, "w").close()
    with pytest.raises(FileExistsError, match="already exists"):
        serving.export_saved_model(task, models, base, 3)
    assert os.path.exists(marker)
    serving.export_saved_model(task, models, base, 3, overwrite=True)
    assert not os.path.exists(marker)


def test_failed_export_leaves_nothing(tmp_path, tiny):
    task, models = tiny

    class Broken(tiny_task.TinyTask):
        def warmup_inputs(self):
            return {"serving_default": {"features": np.zeros((2, 3), np.float32)}}  # wrong width

    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        serving.export_saved_model(Broken(task.config), models, str(tmp_path / "m"), 1)
    assert os.listdir(tmp_path / "m") == []
