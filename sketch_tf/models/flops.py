"""Floating-point operations of a model call, counted on its TensorFlow graph.

The bench scripts divide a model's measured rate by the machine's fp32 matmul rate
(`bench/bench_args.py:matmul_gflops`), so that figures from machines 3x apart in speed can be
compared: both need the FLOPs of one call, counted here once.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

#: FLOPs of a training step per FLOP of the forward pass: the backward pass costs about twice
#: the forward one (gradients for the activations and for the weights of every matmul /
#: convolution); optimizer updates are per weight, negligible for convolutional networks.
TRAIN_STEP_FACTOR = 3


def count_flops(fn: Callable, *input_specs) -> int:
    """FLOPs of one call `fn(*inputs)` on inputs of `input_specs` (fully defined shapes,
    batch included), counted by TensorFlow's profiler on the traced graph.

    A multiply-add counts 2 (matmul and convolution: 2 x output elements x reduction size),
    an elementwise op 1 per output element (bias adds, batch-norm arithmetic); ops without
    FLOP statistics (activations, pooling, resizes, gathers) count 0. A Keras model is called
    with `training=False` (inference: dropout off, batch norm from its moving averages).

    Args:
      fn: a Keras model or any function of tensors (a `tf.function` is traced from its
        Python function).
      input_specs: one `tf.TensorSpec` (or nested structure of them, e.g. a batch dict) per
        positional input, e.g. `tf.TensorSpec([1, 32, 32, 3], tf.float32)` (FLOPs per
        example: batch 1).

    Returns:
      The FLOP count (int).

    Raises:
      ValueError: an input spec's shape is not fully defined (the count would miss ops).
    """
    for spec in tf.nest.flatten(input_specs):
        if not spec.shape.is_fully_defined():
            raise ValueError(f"count_flops: input spec {spec} needs a fully defined shape")
    # A tf.function would be one call op in the traced graph, whose inside the profiler
    # does not count: trace its Python function instead.
    fn = getattr(fn, "python_function", fn)
    if hasattr(fn, "trainable_variables") and callable(fn):  # a Keras model / layer
        model = fn

        def fn(*inputs):
            return model(*inputs, training=False)

    graph = tf.function(fn).get_concrete_function(*input_specs).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"  # the count only, no report on stdout
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def flops_per_example(model) -> int:
    """FLOPs of one example through a Keras model with static input shapes (`count_flops`
    of a batch of 1 built from `model.inputs`): e.g. one point's K zoom views through the
    zooms network, one image through a tower.

    Raises:
      ValueError: an input has a dimension besides the batch that is not static.
    """
    specs = [tf.TensorSpec([1, *x.shape[1:]], x.dtype) for x in model.inputs]
    return count_flops(model, specs[0] if len(specs) == 1 else specs)
