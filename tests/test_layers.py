"""Tests for sketch_tf.models.layers: GradientReversal, L2Normalize, ViewFusion,
FusedBatchNormalization, GridMaxPool."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.models.layers import (
    FusedBatchNormalization,
    GradientReversal,
    GridMaxPool,
    L2Normalize,
    ViewFusion,
)


def _grl_grad(layer, x, upstream):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    return y, tape.gradient(y, x, output_gradients=tf.convert_to_tensor(upstream))


# ----------------------------------------------------------------------------- GradientReversal
def test_grl_is_identity_forward_and_reverses_gradient_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    upstream = rng.normal(size=(4, 6)).astype(np.float32)
    for lam in (1.0, 0.37, 0.0, 2.5):
        layer = GradientReversal(lambda_=lam)
        y, grad = _grl_grad(layer, x, upstream)
        np.testing.assert_array_equal(y.numpy(), x)
        np.testing.assert_array_equal(grad.numpy(), -np.float32(lam) * upstream)
    assert layer.trainable_weights == []
    assert len(layer.non_trainable_weights) == 1


def test_grl_half_precision_gradient_keeps_dtype():
    layer = GradientReversal(0.5, dtype="mixed_float16")  # lambda stays a float32 variable
    x = tf.constant([[1.0, -2.0]], tf.float16)
    y, grad = _grl_grad(layer, x, tf.constant([[2.0, 4.0]], tf.float16))
    assert y.dtype == tf.float16 and grad.dtype == tf.float16
    np.testing.assert_array_equal(grad.numpy(), np.array([[-1.0, -2.0]], np.float16))


def test_set_lambda_eagerly_and_inside_tf_function_without_retracing():
    layer = GradientReversal(1.0)
    x = tf.ones((2, 3))
    traces = []

    @tf.function
    def grad_fn(x):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x))
        return tape.gradient(y, x)

    np.testing.assert_array_equal(grad_fn(x).numpy(), -np.ones((2, 3), np.float32))
    layer.set_lambda(0.25)  # eager, between calls of the compiled function
    np.testing.assert_array_equal(grad_fn(x).numpy(), np.full((2, 3), -0.25, np.float32))
    assert len(traces) == 1

    @tf.function
    def set_in_graph(value):
        layer.set_lambda(value)

    set_in_graph(tf.constant(0.75))
    assert float(layer.lambda_) == 0.75
    np.testing.assert_array_equal(grad_fn(x).numpy(), np.full((2, 3), -0.75, np.float32))
    assert len(traces) == 1


def test_set_lambda_after_checkpoint_restore(tmp_path):
    layer = GradientReversal(0.0)
    layer.set_lambda(0.6)
    ckpt = tf.train.Checkpoint(grl=layer)
    path = ckpt.save(str(tmp_path / "ckpt"))

    fresh = GradientReversal(0.0)
    tf.train.Checkpoint(grl=fresh).restore(path).assert_consumed()
    assert float(fresh.lambda_) == pytest.approx(0.6)
    x = np.ones((1, 2), np.float32)
    _, grad = _grl_grad(fresh, x, x)
    np.testing.assert_array_equal(grad.numpy(), [[-np.float32(0.6), -np.float32(0.6)]])
    fresh.set_lambda(0.2)
    _, grad = _grl_grad(fresh, x, x)
    np.testing.assert_array_equal(grad.numpy(), [[-np.float32(0.2), -np.float32(0.2)]])


def test_layers_serialise_and_reload_in_keras_file(tmp_path):
    inputs = keras.Input((3, 4))
    fused = ViewFusion("upstream")(inputs)
    normed = L2Normalize(epsilon=1e-10)(fused)
    reversed_ = GradientReversal(lambda_=0.9, name="grl")(normed)
    outputs = keras.layers.Dense(2, name="head")(reversed_)
    model = keras.Model(inputs, outputs)
    model.get_layer("grl").set_lambda(0.3)
    path = tmp_path / "m.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)  # no custom_objects: layers are registered
    grl = loaded.get_layer("grl")
    assert isinstance(grl, GradientReversal)
    assert grl.get_config()["lambda_"] == 0.9
    assert float(grl.lambda_) == pytest.approx(0.3)  # the variable value travels as a weight
    x = np.random.default_rng(1).normal(size=(5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)

    for layer in (GradientReversal(0.4), L2Normalize(axis=1, epsilon=1e-6), ViewFusion("upstream")):
        config = keras.saving.serialize_keras_object(layer)
        assert config["registered_name"].startswith("sketch_tf>")
        clone = keras.saving.deserialize_keras_object(config)
        assert type(clone) is type(layer)
        assert clone.get_config() == layer.get_config()


# ----------------------------------------------------------------------------- L2Normalize
def test_l2_normalize_hand_values():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]], np.float32)
    np.testing.assert_allclose(L2Normalize()(x).numpy(), [[0.6, 0.8], [0, 0], [0, -1]], atol=1e-7)
    x3 = np.array([[[3.0, 1.0], [4.0, 0.0]]], np.float32)  # normalise over axis 1
    np.testing.assert_allclose(
        L2Normalize(axis=1)(x3).numpy(), [[[0.6, 1.0], [0.8, 0.0]]], atol=1e-7
    )


# ----------------------------------------------------------------------------- ViewFusion
def test_view_fusion_hand_built():
    # x[0, k, j] = 10 k + j with K = 3 views of D = 4 features.
    x = (10 * np.arange(3)[:, None] + np.arange(4)[None, :]).astype(np.float32)[None]
    np.testing.assert_array_equal(ViewFusion("view_max")(x).numpy(), [[20, 21, 22, 23]])
    # upstream: concat = [0 1 2 3 10 11 12 13 20 21 22 23]; rows of 3:
    # [0 1 2] [3 10 11] [12 13 20] [21 22 23] -> max [2, 11, 20, 23]
    np.testing.assert_array_equal(ViewFusion("upstream")(x).numpy(), [[2, 11, 20, 23]])


def test_view_fusion_upstream_matches_index_formula():
    rng = np.random.default_rng(2)
    b, k, d = 3, 3, 8
    x = rng.normal(size=(b, k, d)).astype(np.float32)
    concat = np.concatenate([x[:, v, :] for v in range(k)], axis=1)  # torch.cat(views, dim=1)
    expected = np.empty((b, d), np.float32)
    for bi in range(b):
        for j in range(d):
            expected[bi, j] = max(concat[bi, j * k + t] for t in range(k))
    np.testing.assert_array_equal(ViewFusion("upstream")(x).numpy(), expected)
    np.testing.assert_array_equal(ViewFusion("view_max")(x).numpy(), x.max(axis=1))
    # In a graph with unknown batch size.
    layer = ViewFusion("upstream")
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, k, d], tf.float32)])
    np.testing.assert_array_equal(fn(x).numpy(), expected)


def test_view_fusion_rejects_bad_mode_and_shape():
    with pytest.raises(ValueError, match="mode must be one of"):
        ViewFusion("mean")
    with pytest.raises(ValueError, match=r"\[B, K, D\]"):
        ViewFusion()(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------------- FusedBatchNormalization
def _bn_pair(**kwargs):
    """A Keras BatchNormalization and a FusedBatchNormalization with the same weights."""
    ref, fused = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    shape = (None, 5, 6, 4)
    ref.build(shape), fused.build(shape)
    rng = np.random.default_rng(3)
    weights = [rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32) for w in ref.weights]
    ref.set_weights(weights)
    fused.set_weights(weights)
    return ref, fused


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9, "epsilon": 1e-4}, {"scale": False}])
def test_fused_batch_norm_matches_keras(kwargs):
    ref, fused = _bn_pair(**kwargs)
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (7, 5, 6, 4)).astype(np.float32))
    up = tf.constant(np.random.default_rng(1).normal(size=(7, 5, 6, 4)).astype(np.float32))
    results = []
    for layer in (ref, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        grads = tape.gradient(y, [x, *layer.trainable_weights], output_gradients=up)
        results.append((y, grads, [w.numpy() for w in layer.weights], layer(x, training=False)))
    (y_r, g_r, w_r, inf_r), (y_f, g_f, w_f, inf_f) = results
    np.testing.assert_allclose(y_f.numpy(), y_r.numpy(), atol=2e-5)
    for a, b in zip(g_f, g_r, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=5e-5)
    # The moving averages take the biased batch variance, as Keras does.
    for a, b in zip(w_f, w_r, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inf_f.numpy(), inf_r.numpy(), atol=2e-5)


def test_fused_batch_norm_falls_back_where_the_kernel_differs():
    # Rank 2, channels-first and an epsilon below the kernel's floor take Keras' path.
    for kwargs, shape in (({}, (6, 4)), ({"axis": 1}, (3, 4, 5, 5)), ({"epsilon": 1e-6}, None)):
        shape = shape or (3, 5, 5, 4)
        x = tf.constant(np.random.default_rng(2).normal(size=shape).astype(np.float32))
        ref, fused = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
        np.testing.assert_array_equal(fused(x, training=True), ref(x, training=True))
        assert not fused._fusable(x, None)
    frozen = FusedBatchNormalization()
    frozen.trainable = False
    x = tf.ones((2, 3, 3, 4))
    frozen(x, training=True)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(4, np.float32))


# ----------------------------------------------------------------------------------- GridMaxPool
def test_grid_max_pool_hand_values_any_size_and_adaptive_parity():
    from sketch_tf.models.backbones import AdaptiveMaxPool2D

    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    # 5 cells in 2: rows / columns 0-2 and 2-4 (PyTorch's overlapping adaptive cells).
    got = GridMaxPool(2)(x).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(got, [[12, 14], [22, 24]])
    rng = np.random.default_rng(1)
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, GridMaxPool(3)(inp))
    fn = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 3])])
    for h, w in ((9, 9), (7, 11), (3, 4)):  # one traced graph, any size >= the grid
        y = rng.normal(size=(2, h, w, 3)).astype(np.float32)
        np.testing.assert_array_equal(fn(y).numpy(), AdaptiveMaxPool2D(3)(y).numpy())
    with pytest.raises(ValueError, match="grid must be an int >= 1"):
        GridMaxPool(0)
    assert GridMaxPool.from_config(GridMaxPool(4).get_config()).grid == 4
