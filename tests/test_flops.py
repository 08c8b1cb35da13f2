"""sketch_tf.models.flops: the profiler's count against a count by hand."""

import keras
import pytest
import tensorflow as tf

from sketch_tf.models.flops import count_flops, flops_per_example


def test_conv_and_dense_flops_match_a_hand_count():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, activation="relu"),  # valid: 6 x 6 x 4 outputs
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )
    conv = 2 * (6 * 6 * 4) * (3 * 3 * 2) + 6 * 6 * 4  # multiply-adds x 2, bias add
    dense = 2 * (6 * 6 * 4) * 5 + 5
    per_example = conv + dense  # the relu counts nothing
    assert count_flops(model, tf.TensorSpec([1, 8, 8, 2], tf.float32)) == per_example
    assert count_flops(model, tf.TensorSpec([3, 8, 8, 2], tf.float32)) == 3 * per_example
    assert flops_per_example(model) == per_example


def test_a_plain_function_and_an_undefined_shape():
    def fn(a, b):
        return tf.matmul(a, b)

    specs = tf.TensorSpec([4, 6], tf.float32), tf.TensorSpec([6, 7], tf.float32)
    assert count_flops(fn, *specs) == 2 * 4 * 6 * 7
    assert count_flops(tf.function(fn), *specs) == 2 * 4 * 6 * 7
    with pytest.raises(ValueError, match="fully defined shape"):
        count_flops(fn, tf.TensorSpec([None, 6], tf.float32), specs[1])
