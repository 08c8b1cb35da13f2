"""`sketch_tf.serving` clients end to end against the test model server (`serving_server`):
REST and gRPC, float and encoded-image signatures, versions, errors, retries, timeouts. Every
result is compared with the same SavedModel run in process (`tf.saved_model.load`)."""

import pickle
import socket
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.export.serving import export_saved_model
from sketch_tf.serving import GRPC_INSTALL_HINT, GrpcClient, RestClient, ServingError
from tests import tiny_task
from tests.serving_server import ModelServer

GRPC_SKIP_REASON = (
    "the TF Serving protos are not installed (pip install --no-deps "
    "'tensorflow-serving-api==2.21.*', as quickstart.sh does)"
)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _decode(encoded):
    """Scalar PNG bytes -> float32 [H, W, 3] in [0, 1]; bad bytes fail naming the input, as
    the signatures of `sketch_tf.export.inputs` do."""
    ok = tf.strings.substr(encoded, 0, len(_PNG_MAGIC)) == _PNG_MAGIC
    check = tf.debugging.Assert(ok, ["input `images`: expected PNG bytes"])
    with tf.control_dependencies([check]):
        image = tf.io.decode_png(encoded, channels=3)
    return tf.cast(image, tf.float32) / 255.0


class PngModel(tf.Module):
    """Encoded-image signatures: `serving_default` images string [N] -> mean float32 [N] (one
    output, which TF Serving's REST API returns unnamed); `stats` images [N] + scale float32
    scalar -> mean [N] * scale, size int32 [N, 2] (height, width), caption string [N] (UTF-8
    text), echo_bytes string [N] (the input bytes)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def mean_pixel(self, images):
        means = tf.map_fn(
            lambda x: tf.reduce_mean(_decode(x)), images, fn_output_signature=tf.float32
        )
        return {"mean": means}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="images"),
            tf.TensorSpec([], tf.float32, name="scale"),
        ]
    )
    def stats(self, images, scale):
        def one(x):
            image = _decode(x)
            size = tf.shape(image, out_type=tf.int32)[:2]
            caption = tf.strings.format("{}\u00d7{}", (size[0], size[1]))
            return tf.reduce_mean(image) * scale, size, caption

        mean, size, caption = tf.map_fn(
            one,
            images,
            fn_output_signature=(
                tf.float32,
                tf.TensorSpec([2], tf.int32),
                tf.string,
            ),
        )
        return {"mean": mean, "size": size, "caption": caption, "echo_bytes": images}


def _png(seed: int, height: int, width: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


PNGS = [_png(0, 4, 6), _png(1, 5, 3), _png(2, 2, 2)]
FEATURES = tiny_task._data(11, 5)[0]  # float32 [5, 8]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{model name: export base}: `tiny` versions 1 and 2 (different weights) written by
    `export_saved_model`, `png` version 1 (PngModel)."""
    base = tmp_path_factory.mktemp("serving")
    task = tiny_task.TinyTask(tiny_task.get_config())
    for version in (1, 2):
        export_saved_model(task, task.build_models(), str(base / "tiny"), version)
    module = PngModel()
    tf.saved_model.save(
        module,
        str(base / "png" / "1"),
        signatures={"serving_default": module.mean_pixel, "stats": module.stats},
    )
    return {"tiny": str(base / "tiny"), "png": str(base / "png")}


@pytest.fixture(scope="module")
def server(exports):
    with ModelServer(exports) as s:
        yield s


@pytest.fixture(scope="module")
def expected(exports):
    """expected(model, version, signature, inputs) -> outputs of the SavedModel in process."""
    loaded = {}

    def run(model, version, signature, inputs):
        if (model, version) not in loaded:
            loaded[model, version] = tf.saved_model.load(f"{exports[model]}/{version}")
        fn = loaded[model, version].signatures[signature]
        return {
            k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()
        }

    return run


@pytest.fixture(params=["rest", "grpc"])
def protocol(request):
    if request.param == "grpc":
        pytest.importorskip("tensorflow_serving.apis.predict_pb2", reason=GRPC_SKIP_REASON)
    return request.param


@pytest.fixture
def make_client(server, protocol):
    """make_client(model="tiny", port=None, **kwargs) -> a fresh client of this protocol."""
    clients = []

    def make(model="tiny", port=None, **kwargs):
        kwargs = {"timeout_s": 10.0, "backoff_s": 0.01, **kwargs}
        if protocol == "rest":
            client = RestClient(
                "127.0.0.1", port or server.rest_port, model=model, proxies={}, **kwargs
            )
        else:
            client = GrpcClient(
                "127.0.0.1",
                port or server.grpc_port,
                model=model,
                channel_options=[("grpc.enable_http_proxy", 0)],
                **kwargs,
            )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _assert_outputs(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_serving_default_float_input(make_client, expected):
    want = expected("tiny", 2, "serving_default", {"features": FEATURES})
    client = make_client()
    _assert_outputs(client.predict({"features": FEATURES}), want)
    # The same call with float64 values (numpy's default) and with nested lists.
    _assert_outputs(client.predict({"features": FEATURES.astype(np.float64)}), want)
    _assert_outputs(client.predict({"features": FEATURES.tolist()}), want)


def test_versions_explicit_and_latest(make_client, expected, server):
    inputs = {"features": FEATURES}
    v1 = make_client(version=1).predict(inputs)
    latest = make_client().predict(inputs)
    _assert_outputs(v1, expected("tiny", 1, "serving_default", inputs))
    _assert_outputs(latest, expected("tiny", 2, "serving_default", inputs))
    _assert_outputs(make_client(version=2).predict(inputs), latest)
    assert not np.allclose(v1["logits"], latest["logits"])  # two different models
    with pytest.raises(ServingError, match="version 9") as info:
        make_client(version=9).predict(inputs)
    assert info.value.code == "NOT_FOUND" and info.value.version == 9


def test_encoded_image_input(make_client, expected):
    want = expected("png", 1, "serving_default", {"images": PNGS})
    client = make_client("png")
    for images in (PNGS, np.array(PNGS, dtype=object), tf.constant(PNGS)):
        _assert_outputs(client.predict({"images": images}), want)  # one output: "mean"
    one = client.predict({"images": [PNGS[1]]})["mean"]
    np.testing.assert_allclose(one, want["mean"][1:2], atol=1e-5)


def test_named_signature_with_string_outputs(make_client, expected):
    inputs = {"images": PNGS, "scale": 0.5}  # a Python float for a float32 scalar
    want = expected("png", 1, "stats", {"images": PNGS, "scale": np.float32(0.5)})
    got = make_client("png").predict(inputs, signature="stats")
    _assert_outputs(got, want)
    assert list(got["echo_bytes"]) == PNGS
    assert got["caption"][0] == "4\u00d76".encode()
    np.testing.assert_array_equal(got["size"], [[4, 6], [5, 3], [2, 2]])


def test_metadata(make_client):
    sigs = make_client("png").metadata()
    assert {"serving_default", "stats"} <= set(sigs)  # (and TF's __saved_model_init_op)
    images = sigs["stats"]["inputs"]["images"]
    assert images.dtype == np.dtype(object) and images.shape == (None,)
    assert sigs["stats"]["inputs"]["scale"].shape == ()
    assert sigs["stats"]["outputs"]["size"].dtype == np.int32
    assert sigs["stats"]["outputs"]["size"].shape == (None, 2)


def test_rest_without_metadata_falls_back_to_float32(server, expected):
    client = RestClient("127.0.0.1", server.rest_port, model="png", use_metadata=False, proxies={})
    n = server.count("REST", "GetModelMetadata")
    got = client.predict({"images": PNGS})
    assert server.count("REST", "GetModelMetadata") == n
    want = expected("png", 1, "serving_default", {"images": PNGS})["mean"]
    assert list(got) == ["outputs"] and got["outputs"].dtype == np.float32
    np.testing.assert_allclose(got["outputs"], want, atol=1e-5)


def test_malformed_image_bytes(make_client, protocol, server):
    client = make_client("png")
    with pytest.raises(ServingError) as info:
        client.predict({"images": [PNGS[0], b"not a png"]})
    e = info.value
    assert isinstance(e, RuntimeError)
    assert e.input_name == "images" and e.code == "INVALID_ARGUMENT"
    assert e.model == "png" and e.version is None and e.signature == "serving_default"
    assert "input `images`: expected PNG bytes" in e.server_message
    text = str(e)
    for part in ("'png'", "latest", "'serving_default'", "'images'", "INVALID_ARGUMENT"):
        assert part in text
    assert f"127.0.0.1:{client.port}" in text
    if protocol == "rest":
        assert e.http_status == 400 and e.grpc_code is None
    else:
        import grpc

        assert e.grpc_code == grpc.StatusCode.INVALID_ARGUMENT and e.http_status is None
    assert e.attempts == 1
    assert pickle.loads(pickle.dumps(e)).input_name == "images"


def test_input_rejected_by_the_client(make_client, server):
    client = make_client("png")
    client.metadata()
    before = server.count(method="Predict")
    for bad in ([{"a": 1}], [b"x", 3], [[b"x"], [b"y", b"z"]]):
        with pytest.raises(ServingError, match="input 'images'") as info:
            client.predict({"images": bad})
        assert info.value.input_name == "images" and info.value.code == "INVALID_ARGUMENT"
        assert info.value.server_message is None
    assert server.count(method="Predict") == before  # never sent


def test_unknown_signature_and_inputs(make_client):
    client = make_client()
    with pytest.raises(ServingError, match="signature 'nope'") as info:
        client.predict({"features": FEATURES}, signature="nope")
    assert info.value.code == "NOT_FOUND" and "nope" in info.value.server_message
    with pytest.raises(ServingError, match="Missing but required") as info:
        client.predict({"pixels": FEATURES})
    assert info.value.code == "INVALID_ARGUMENT" and info.value.input_name == "features"
    with pytest.raises(ServingError, match="model 'nobody'") as info:
        make_client("nobody").predict({"features": FEATURES})
    assert info.value.code == "NOT_FOUND"


def test_retries_on_unavailable(make_client, protocol, server, expected):
    want = expected("tiny", 2, "serving_default", {"features": FEATURES})
    with server.unavailable(2):
        start = time.perf_counter()
        got = make_client(retries=3, backoff_s=0.05).predict({"features": FEATURES})
        elapsed = time.perf_counter() - start
    _assert_outputs(got, want)
    assert elapsed >= 0.05 + 0.1  # backoff 0.05 s, then 0.1 s
    n = server.count()
    with server.unavailable(2), pytest.raises(ServingError) as info:
        make_client(retries=0).predict({"features": FEATURES})
    assert server.count() == n + 1  # no retry
    assert info.value.code == "UNAVAILABLE" and info.value.attempts == 1
    assert "simulated" in info.value.server_message
    if protocol == "rest":
        assert info.value.http_status == 503


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_connection_refused_is_retried(make_client):
    port = _free_port()
    with pytest.raises(ServingError) as info:
        make_client(port=port, retries=2, backoff_s=0.01).predict({"features": FEATURES})
    assert info.value.code == "UNAVAILABLE" and info.value.attempts == 3
    assert f"127.0.0.1:{port}" in str(info.value) and "after 3 attempts" in str(info.value)


def test_server_coming_up_during_the_retries(make_client, protocol, exports, expected):
    # Connection refused until a server starts listening on the port 0.3 s later.
    port = _free_port()
    ports = {"rest_port": port} if protocol == "rest" else {"grpc_port": port}
    late = ModelServer({"tiny": exports["tiny"]}, grpc=protocol == "grpc", **ports)
    timer = threading.Timer(0.3, late.start)
    timer.start()
    try:
        client = make_client(port=port, retries=8, backoff_s=0.05)
        got = client.predict({"features": FEATURES})
    finally:
        timer.join()
        late.stop()
    _assert_outputs(got, expected("tiny", 2, "serving_default", {"features": FEATURES}))


def test_timeout(make_client, server):
    client = make_client(timeout_s=0.3, retries=3)
    client.metadata()
    with server.delay(1.5):
        start = time.perf_counter()
        with pytest.raises(ServingError) as info:
            client.predict({"features": FEATURES})
        elapsed = time.perf_counter() - start
    assert info.value.code == "DEADLINE_EXCEEDED" and info.value.attempts == 1
    assert elapsed < 1.2 and "0.3 s" in str(info.value)
    # A longer timeout for one call (the server is no longer slow).
    got = client.predict({"features": FEATURES}, timeout_s=10.0)
    assert got["logits"].shape == (5, 4)


def test_grpc_client_says_how_to_install_the_protos(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "tensorflow_serving"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the wheel were not installed
    monkeypatch.setitem(sys.modules, "tensorflow_serving", None)
    with pytest.raises(ImportError, match="tensorflow-serving-api") as info:
        GrpcClient("127.0.0.1", 1, model="tiny")
    assert GRPC_INSTALL_HINT in str(info.value)
