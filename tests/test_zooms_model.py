"""Tests for sketch_tf.models.zooms: shared backbone, heads, fusion, describe_points."""

import keras
import numpy as np
import pytest

from sketch_tf.data.zooms import zoom_views
from sketch_tf.models.zooms import build_zooms_model, describe_points

KW = dict(backbone="small_cnn", view_size=32, descriptor_dim=16, head_hidden=24)
SMALL = dict(backbone_kwargs={"widths": (8, 16)})


@pytest.fixture(scope="module")
def views():
    return np.random.default_rng(0).random((4, 3, 32, 32, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def model():
    return build_zooms_model(**KW, **SMALL)


def _per_view(model, views):
    """Independent path: backbone and head applied view by view -> [B, K, D]."""
    net = model.get_layer("small_cnn")
    hidden, out = model.get_layer("head_hidden"), model.get_layer("head_out")
    return np.stack(
        [out(hidden(net(views[:, k], training=False))).numpy() for k in range(views.shape[1])],
        axis=1,
    )


def test_view_max_is_max_over_per_view_descriptors(model, views):
    got = model(views, training=False).numpy()
    assert got.shape == (4, 16)
    np.testing.assert_allclose(got, _per_view(model, views).max(axis=1), atol=1e-5)
    # Shared weights + max: the order of the views does not matter.
    np.testing.assert_allclose(model(views[:, ::-1]).numpy(), got, atol=1e-5)


def test_upstream_fusion_is_stride_k_max_of_concatenation(views):
    up = build_zooms_model(**KW, **SMALL, fusion="upstream")
    per = _per_view(up, views)  # [B, K, D]
    concat = per.reshape(4, 3 * 16)  # view-major concatenation, like torch.cat
    ref = concat.reshape(4, 16, 3).max(-1)
    np.testing.assert_allclose(up(views, training=False).numpy(), ref, atol=1e-5)
    assert not np.allclose(ref, per.max(1))


def test_l2_normalize_and_dropout(views):
    m = build_zooms_model(**KW, **SMALL, l2_normalize=True, dropout=0.5)
    d = m(views, training=False).numpy()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(d, m(views, training=False).numpy())
    assert not np.allclose(m(views, training=True).numpy(), d)


def test_original_alexnet_head_and_224_shapes():
    m = build_zooms_model()  # alexnet, 224, K=3, D=128
    assert m.input_shape == (None, 3, 224, 224, 3) and m.output_shape == (None, 128)
    assert m.get_layer("head_hidden").units == 4096
    assert m.get_layer("head_dropout").rate == 0.5
    assert build_zooms_model("resnet18", 32, head="auto").get_layer("head_out").units == 128


def test_describe_points_matches_manual_and_batches(model):
    rng = np.random.default_rng(1)
    img = (rng.random((2, 96, 96, 3)) > 0.9).astype(np.uint8) * 255
    pts = rng.uniform(0, 96, size=(2, 7, 2)).astype(np.float32)
    zk = dict(reference_size=256)
    got = describe_points(model, img, pts, zk, batch_points=3)
    assert got.shape == (2, 7, 16)
    v = zoom_views(img.astype(np.float32) / 255.0, pts, view_size=32, **zk)
    ref = model(v.numpy().reshape(14, 3, 32, 32, 3), training=False).numpy().reshape(2, 7, 16)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    single = describe_points(model, img[1], pts[1], zk, batch_points=100)
    np.testing.assert_allclose(single, ref[1], atol=1e-5)
    with pytest.raises(ValueError, match="model expects 3 views of 32px"):
        describe_points(model, img[0], pts[0], dict(zooms=(1.0, 0.5)))


def test_save_load_keras_roundtrip(model, views, tmp_path):
    path = tmp_path / "zooms.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again(views).numpy(), model(views).numpy(), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="fusion"):
        build_zooms_model(**KW, fusion="mean")
    with pytest.raises(ValueError, match="head"):
        build_zooms_model(**KW, head="deep")
