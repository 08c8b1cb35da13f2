"""Small Keras 3 layers shared by the model families.

- `GradientReversal`: identity forward, ``-lambda * grad`` backward (zero-shot SBIR domain
  classifier); lambda lives in a non-trainable variable so a schedule can change it between
  epochs without retracing and it is saved with checkpoints.
- `L2Normalize`: unit-length descriptors / embeddings (always computed in float32).
- `dtype_policy`: Keras' global dtype policy for the layers built inside a block.
- `float32_output`: the cast that ends a model built under a mixed-precision policy, so
  its outputs (and the losses and exports after them) are float32.
- `ViewFusion`: fuse K per-view descriptors into one (SketchZooms), either as in the paper
  (max across views) or bit-compatible with the public PyTorch code (stride-K max over the
  concatenated views).
- `FusedBatchNormalization`: Keras' BatchNormalization computed by one fused kernel for
  channels-last 4-D inputs (same variables, same statistics, same moving-average update).
- `GridMaxPool`: max over a fixed g x g grid of cells of a feature map of *any* size (the
  fine-grained towers see training crops and whole images).

All layers are registered as ``sketch_tf>ClassName`` so saved ``.keras`` models reload without
``custom_objects``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf
from keras import layers, ops

__all__ = [
    "FUSION_MODES",
    "FusedBatchNormalization",
    "GradientReversal",
    "GridMaxPool",
    "L2Normalize",
    "ViewFusion",
    "dtype_policy",
    "float32_output",
]

#: Modes of `ViewFusion`.
FUSION_MODES = ("view_max", "upstream")


def _reverse_gradient(x: tf.Tensor, lam: tf.Tensor) -> tf.Tensor:
    """Identity on `x` whose gradient is ``-lam * upstream``; `lam` gets no gradient."""

    @tf.custom_gradient
    def _reverse(x, lam):
        def grad(upstream):
            return -lam * upstream, tf.zeros_like(lam)

        return tf.identity(x), grad

    return _reverse(x, lam)


# TF's fused kernel clamps epsilon to at least this; smaller epsilons take Keras' own path.
_FUSED_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="sketch_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` on one fused kernel (`FusedBatchNormV3`).

    Keras 3 normalises with a chain of element-wise ops (moments, subtract, scale, shift),
    each a pass over the activations and again in the backward pass; on [1536, 32, 32, 32]
    activations (a SketchZooms step of small_cnn) that chain costs ~4.8x the fused kernel
    (the descriptor benchmark in bench/ measures the step). Same variables, same
    normalisation with the biased batch variance, same moving-average update (the kernel's
    Bessel-corrected variance is scaled back by (n - 1) / n), so checkpoints and weights are
    interchangeable with the Keras layer. Inputs other than channels-last float32
    [B, H, W, C] with a plain configuration (no mask, renorm, synchronisation,
    epsilon >= 1.001e-5) take Keras' path.

    Shapes: [B, H, W, C] -> [B, H, W, C] (any rank on the fallback path).
    """

    def _fusable(self, inputs, mask) -> bool:
        axis = self.axis if isinstance(self.axis, int) else None
        return (
            mask is None
            and len(inputs.shape) == 4
            and axis in (-1, 3)
            and inputs.dtype == tf.float32
            and self.compute_dtype == "float32"
            and not self.renorm
            and not self.synchronized
            and self.epsilon >= _FUSED_MIN_EPSILON
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = tf.shape(inputs)[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True
            )[:3]
            n = tf.cast(tf.size(inputs) // channels, tf.float32)
            variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))  # Bessel's correction off
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
            return outputs
        return tf.compat.v1.nn.fused_batch_norm(
            inputs,
            gamma,
            beta,
            mean=self.moving_mean,
            variance=self.moving_variance,
            epsilon=self.epsilon,
            is_training=False,
        )[0]


@keras.saving.register_keras_serializable(package="sketch_tf")
class GradientReversal(keras.layers.Layer):
    """Gradient reversal layer (Ganin & Lempitsky 2015).

    Forward: ``y = x`` (any shape, any float dtype). Backward: ``dL/dx = -lambda * dL/dy``.

    `lambda` is a non-trainable float32 scalar variable (weight name ``"lambda"``), created in
    the constructor so that it exists before a checkpoint restore. Change it with
    `set_lambda`, eagerly or inside a `tf.function`; compiled call functions read the
    variable at run time, so no retracing is needed.

    Args:
      lambda_: initial value of lambda (float, usually in [0, 1]).
    """

    def __init__(self, lambda_: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self._initial_lambda = float(lambda_)
        self.lambda_var = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self._initial_lambda),
            trainable=False,
            dtype="float32",
            name="lambda",
        )

    @property
    def lambda_(self) -> tf.Tensor:
        """Current lambda as a float32 scalar tensor."""
        return ops.convert_to_tensor(self.lambda_var)

    def set_lambda(self, value) -> None:
        """Set lambda (python float or scalar tensor); works eagerly and in `tf.function`."""
        self.lambda_var.assign(ops.cast(value, "float32"))

    def call(self, inputs):
        lam = ops.cast(ops.convert_to_tensor(self.lambda_var), inputs.dtype)
        return _reverse_gradient(inputs, tf.stop_gradient(lam))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["lambda_"] = self._initial_lambda
        return config


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Sets Keras' global dtype policy (`"float32"`, `"mixed_float16"`, `"mixed_bfloat16"`)
    inside the block and restores the previous one on the way out, also on an error. A layer
    keeps the policy it was built with, so setting it while models are built is enough
    (`sketch_tf.train.precision.policy`); pretrained networks whose code is not
    mixed-precision safe are built inside `dtype_policy("float32")`."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_output(x, name: str = "output_float32"):
    """`x` (a symbolic Keras tensor) cast to float32 by a weightless layer, or `x` itself when
    it is float32 already (under the float32 policy nothing is added, so the architecture and
    checkpoints are those of a float32 model). Ends every model whose last layer would
    otherwise compute in the global mixed-precision policy (`sketch_tf.train.precision`)."""
    if str(x.dtype) == "float32":
        return x
    return layers.Activation("linear", dtype="float32", name=name)(x)


@keras.saving.register_keras_serializable(package="sketch_tf")
class L2Normalize(keras.layers.Layer):
    """Scale vectors to unit L2 norm along `axis`.

    ``y = x / sqrt(max(sum(x^2, axis), epsilon))`` (the same rule as ``tf.math.l2_normalize``;
    an all-zero vector stays zero). Any input shape; output has the input shape.

    Computes in float32 whatever the global dtype policy (inputs are cast): the sum of squares
    of a bfloat16 / float16 vector loses the precision (and float16 the range) unit vectors
    need, and normalised embeddings are what losses, indexes and exports compare.

    Args:
      axis: int axis (default -1, the feature axis).
      epsilon: floor on the squared norm.
    """

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        sq = ops.sum(ops.square(inputs), axis=self.axis, keepdims=True)
        return inputs * ops.rsqrt(ops.maximum(sq, ops.cast(self.epsilon, inputs.dtype)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="sketch_tf")
class ViewFusion(keras.layers.Layer):
    """Fuse K per-view descriptors: [B, K, D] -> [B, D].

    - ``mode="view_max"`` (SketchZooms paper): ``y[b, j] = max_k x[b, k, j]``.
    - ``mode="upstream"`` (public SketchZooms PyTorch code, for converted weights): the views
      are concatenated view-major into ``c[b, k*D + j] = x[b, k, j]`` and reshaped to
      [B, D, K] before a max over the last axis, i.e. ``y[b, j] = max_{t<K} c[b, j*K + t]``:
      a stride-K max over the concatenated vector that mixes different feature indices.

    K and D must be known when the layer is built.

    Args:
      mode: ``"view_max"`` or ``"upstream"``.
    """

    def __init__(self, mode: str = "view_max", **kwargs):
        super().__init__(**kwargs)
        if mode not in FUSION_MODES:
            raise ValueError(f"ViewFusion: mode must be one of {FUSION_MODES}, got {mode!r}")
        self.mode = mode
        self._views = None
        self._dim = None

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                f"ViewFusion: input must have shape [B, K, D] with K and D known, got {input_shape}"
            )
        self._views = int(input_shape[1])
        self._dim = int(input_shape[2])

    def call(self, inputs):
        if self.mode == "view_max":
            return ops.max(inputs, axis=1)
        concat = ops.reshape(inputs, (-1, self._views * self._dim))  # view-major concatenation
        return ops.max(ops.reshape(concat, (-1, self._dim, self._views)), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package="sketch_tf")
class GridMaxPool(keras.layers.Layer):
    """Max over a `grid` x `grid` partition of a feature map: [B, H, W, C] -> [B, g, g, C].

    Cell i spans rows floor(i H / g) .. ceil((i + 1) H / g) - 1 (the same for columns), the
    cells of PyTorch's adaptive max pooling (`sketch_tf.models.backbones.AdaptiveMaxPool2D`,
    which needs static sizes). Here H and W may change from call to call (H, W >= g): a
    tower trained on crops of a feature map embeds whole images with the same weights, and
    each grid cell still covers the same fraction of the view.

    Args:
      grid: g, cells per side (>= 1).
    """

    def __init__(self, grid: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(grid, bool) or int(grid) < 1:
            raise ValueError(f"GridMaxPool: grid must be an int >= 1, got {grid!r}")
        self.grid = int(grid)

    def call(self, inputs):
        g = self.grid
        shape = ops.shape(inputs)
        h, w = shape[1], shape[2]
        rows = []
        for i in range(g):
            band = ops.max(inputs[:, (i * h) // g : -((-(i + 1) * h) // g)], axis=1)  # [B, W, C]
            cells = [
                ops.max(band[:, (j * w) // g : -((-(j + 1) * w) // g)], axis=1) for j in range(g)
            ]
            rows.append(ops.stack(cells, axis=1))
        return ops.stack(rows, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid, self.grid, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config["grid"] = self.grid
        return config
