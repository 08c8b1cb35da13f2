"""The serving input layer: bytes and float tensors -> model inputs as evaluation makes them,
bad input -> InvalidArgument naming the input; eagerly and inside a tf.function."""

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.core.png import encode_png
from sketch_tf.data import pipeline
from sketch_tf.export import inputs


def _drawing(h=40, w=60):
    img = np.full((h, w, 3), 255, np.uint8)
    img[10:12, 5:50] = 0
    img[5:35, 30:32] = 0
    return img


@pytest.mark.parametrize("is_sketch", [True, False])
def test_bytes_and_floats_match_the_evaluation_preprocessing(is_sketch):
    img = _drawing()
    png = encode_png(img)
    want = pipeline.preprocess(tf.constant(png), is_sketch, 24, False).numpy()
    got = inputs.images_from_bytes(tf.constant([png, png]), "images", 24, is_sketch).numpy()
    assert got.shape == (2, 24, 24, 3)
    np.testing.assert_array_equal(got[0], want)
    floats = tf.constant(img[None].astype(np.float32) / 255.0)
    via_float = inputs.images_from_floats(floats, "images", 24, is_sketch).numpy()
    np.testing.assert_allclose(via_float[0], want, atol=1e-6)
    traced = tf.function(lambda b: inputs.images_from_bytes(b, "images", 24, is_sketch))
    np.testing.assert_array_equal(traced(tf.constant([png])).numpy()[0], want)


def test_malformed_bytes_name_the_input():
    good = encode_png(_drawing())
    fn = tf.function(lambda b: inputs.images_from_bytes(b, "images", 16, True))
    for bad in (b"not an image at all", b"", good[:8]):
        with pytest.raises(
            tf.errors.InvalidArgumentError, match="input `images`: expected complete PNG"
        ):
            fn(tf.constant([good, bad]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `image`"):
        inputs.drawing_with_geometry(tf.constant(b"GIF"), "image", 16)


def test_out_of_range_floats_name_the_input():
    x = np.full((1, 8, 8, 3), 2.0, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `images`.*\\[0, 1\\]"):
        inputs.images_from_floats(tf.constant(x), "images", 8, True)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `images`"):
        inputs.images_from_floats(tf.constant(x), "images", 8, True)


def test_geometry_maps_points_like_evaluation():
    png = encode_png(_drawing(40, 80))
    img, scale, offset = inputs.drawing_with_geometry(tf.constant(png), "image", 32)
    assert img.shape == (32, 32, 3)
    # 80 px wide -> 32: scale 0.4; 40 px high -> 16 rows, centred: 8 rows of padding on top.
    np.testing.assert_allclose(scale.numpy(), [0.4, 0.4])
    np.testing.assert_allclose(offset.numpy(), [0.0, 8.0])


def test_example_drawing_is_a_line_drawing():
    img = inputs.example_drawing(48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    ink = (img[..., 0] < 128).mean()
    assert 0.05 < ink < 0.4
