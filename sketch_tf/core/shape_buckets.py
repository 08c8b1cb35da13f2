"""Shape buckets for XLA kernels: one compilation per bucket of sizes instead of per size.

Used by the input layer (training images padded to a bucket before the fused warp) and by
the models that run a compiled function over a variable number of rows.
"""

from __future__ import annotations

import math

import tensorflow as tf


def pow2_at_least(n: tf.Tensor, minimum: int) -> tf.Tensor:
    """The smallest power of two >= max(n, minimum), int32 scalar tensor (n: int scalar)."""
    n = tf.maximum(tf.cast(n, tf.int32), minimum)
    p = tf.bitwise.left_shift(
        1, tf.cast(tf.math.ceil(tf.math.log(tf.cast(n, tf.float32)) / math.log(2.0)), tf.int32)
    )
    return tf.where(p < n, 2 * p, p)  # guards float rounding of the logarithm
