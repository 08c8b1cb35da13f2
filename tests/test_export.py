"""The export path: TF Serving layout, warmup requests, reload parity, atomic write."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    # No temp folder left behind; the server's config files next to the versions.
    assert sorted(os.listdir(tmp_path / "tiny")) == [
        "7",
        serving.BATCHING_FILE,
        serving.MODELS_CONFIG_FILE,
    ]
    loaded = tf.saved_model.load(path)
    x = tiny_task._data(99, 5)[0]
    got = loaded.signatures["serving_default"](features=tf.constant(x))
    want = task.logits(models, x, training=False).numpy()
    np.testing.assert_allclose(got["logits"].numpy(), want, atol=1e-5)
    np.testing.assert_array_equal(got["label"].numpy(), np.argmax(want, -1))


def test_signatures_through_the_tf1_session_loader(tmp_path, tiny):
    # The server's path: tf.compat.v1 loader, feeds and fetches by SignatureDef tensor names.
    task, models = tiny
    path = serving.export_saved_model(task, models, str(tmp_path / "m"), 1)
    x = tiny_task._data(5, 4)[0]
    out = serving.session_outputs(path, {"serving_default": {"features": x}})["serving_default"]
    want = task.logits(models, x, training=False).numpy()
    np.testing.assert_allclose(out["logits"], want, atol=1e-5)
    with pytest.raises(KeyError, match="no signature 'nope'"):
        serving.session_outputs(path, {"nope": {"features": x}})
    with pytest.raises(KeyError, match="no inputs \\['pixels'\\]"):
        serving.session_outputs(path, {"serving_default": {"pixels": x}})


def _two_signature_model(path: str):
    """A SavedModel with two signatures over one variable; returns (module, signatures)."""
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    spec = tf.TensorSpec([None, 3], tf.float32)
    signatures = {
        "serving_default": tf.function(lambda x: {"y": x * module.scale}).get_concrete_function(
            spec
        ),
        "shifted": tf.function(lambda x: {"y": x + module.scale}).get_concrete_function(spec),
    }
    tf.saved_model.save(module, path, signatures=signatures)
    return module, signatures


def test_session_outputs_runs_several_signatures_at_once(tmp_path):
    # All requests go through one Session.run: each signature still answers its own inputs.
    path = str(tmp_path / "two")
    _two_signature_model(path)
    a, b = np.ones([2, 3], np.float32), np.arange(3, dtype=np.float32)[None]
    out = serving.session_outputs(path, {"serving_default": {"x": a}, "shifted": {"x": b}})
    np.testing.assert_allclose(out["serving_default"]["y"], 2 * a)
    np.testing.assert_allclose(out["shifted"]["y"], b + 2)


def test_reload_check_names_the_signature_that_differs(tmp_path):
    path = str(tmp_path / "two")
    module, signatures = _two_signature_model(path)
    inputs = {"serving_default": {"x": np.ones([1, 3], np.float32)}}
    inputs["shifted"] = inputs["serving_default"]
    serving._check_reload(path, signatures, inputs, atol=1e-6)  # as saved: passes
    module.scale.assign(3.0)  # the in-memory model no longer is what was saved
    with pytest.raises(RuntimeError, match="signature 'serving_default' reloaded with"):
        serving._check_reload(path, signatures, inputs, atol=1e-6)


def test_warmup_file_round_trip(tmp_path, tiny):
    task, models = tiny
    path = serving.export_saved_model(task, models, str(tmp_path / "m"), 1)
    requests = warmup.read_warmup_requests(os.path.join(path, serving.WARMUP_FILE))
    assert len(requests) == 1
    req = requests[0]
    assert req["model"] == "tiny" and req["signature"] == "serving_default"
    np.testing.assert_array_equal(
        req["inputs"]["features"], task.serving().warmup_inputs()["serving_default"]["features"]
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

    class BrokenServing(tiny_task.TinyServing):
        def warmup_inputs(self, signatures=None):
            return {"serving_default": {"features": np.zeros((2, 3), np.float32)}}  # wrong width

    class Broken(tiny_task.TinyTask):
        serving_type = BrokenServing

    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        serving.export_saved_model(Broken(task.config), models, str(tmp_path / "m"), 1)
    assert os.listdir(tmp_path / "m") == []


def test_server_config_files_parse(tmp_path, tiny):
    from google.protobuf import text_format

    model_server_config_pb2 = pytest.importorskip(
        "tensorflow_serving.config.model_server_config_pb2",
        reason="tensorflow-serving-api (installed by quickstart.sh) gives the server's protos",
    )
    task, models = tiny
    base = str(tmp_path / "m")
    serving.export_saved_model(task, models, base, 1, model_name="tiny_model")
    config = text_format.Parse(
        Path(base, serving.MODELS_CONFIG_FILE).read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )
    (entry,) = config.model_config_list.config
    assert entry.name == "tiny_model" and entry.base_path == "/models/tiny_model"
    assert entry.model_platform == "tensorflow"
    assert entry.model_version_policy.latest.num_versions == 1
    # BatchingParameters is not in the tensorflow-serving-api wheel: check the text format
    # line by line against its field names.
    fields = {"max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"}
    lines = Path(base, serving.BATCHING_FILE).read_text().splitlines()
    parsed = dict(re.fullmatch(r"(\w+) \{ value: (\d+) \}", line).groups() for line in lines)
    assert set(parsed) == fields and int(parsed["max_batch_size"]) >= 1
    assert serving.next_version(base) == 2 and serving.next_version(str(tmp_path / "no")) == 1


_EXPORT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from sketch_tf.export import serving
from tests import tiny_task
task = tiny_task.TinyTask(tiny_task.get_config())
serving.export_saved_model(task, task.build_models(), {base!r}, 2)
"""


def test_export_killed_midway_leaves_no_version(tmp_path, tiny):
    task, models = tiny
    base = tmp_path / "m"
    serving.export_saved_model(task, models, str(base), 1)
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXPORT_SCRIPT.format(root=root, base=str(base))]
    )
    try:
        deadline = time.monotonic() + 120
        while not any(n.startswith(".tmp-") for n in os.listdir(base)):
            assert proc.poll() is None, "the export process ended before writing anything"
            assert time.monotonic() < deadline, "no temporary export folder appeared"
            time.sleep(0.005)
        time.sleep(np.random.default_rng().uniform(0.0, 0.2))  # somewhere in save / check
        temps = [n for n in os.listdir(base) if n.startswith(".tmp-")]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    if temps:  # killed before its rename (nearly always): no version 2, only a hidden temp
        assert not (base / "2").exists()
    else:  # the rename had happened: then version 2 is complete
        tf.saved_model.load(str(base / "2"))
    print(f"killed with temporaries {temps}; versions {sorted(n for n in os.listdir(base))}")
    # Version 1 still loads; the next export removes the dead process's temporary folder.
    tf.saved_model.load(str(base / "1"))
    serving.export_saved_model(task, models, str(base), 3)
    assert not [n for n in os.listdir(base) if n.startswith(".")]


def test_replaced_version_killed_before_rename_is_restored(tmp_path, tiny):
    task, models = tiny
    base = tmp_path / "m"
    serving.export_saved_model(task, models, str(base), 5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # What an `overwrite` export killed between its two renames leaves: 5 moved aside.
    os.rename(base / "5", base / f".old-5-{dead.pid}-0123abcd")
    serving.export_saved_model(task, models, str(base), 6)
    assert (base / "5" / "saved_model.pb").is_file()
    assert not [n for n in os.listdir(base) if n.startswith(".")]
