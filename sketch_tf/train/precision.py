"""Numeric precision of a run (`config.train.precision`): the Keras dtype policy its models
are built under, and loss scaling for float16.

- `float32` (default): everything in float32.
- `mixed_float16`: layers compute in float16 (GPU tensor cores), variables stay float32.
  float16 has 5 exponent bits, so small gradients underflow to 0: the loop multiplies the
  loss by a dynamic scale before taking gradients, and `keras.optimizers.LossScaleOptimizer`
  divides the gradients by it before the update. A step whose gradients are not finite (the
  scale was too large) is skipped and the scale halved; after 2000 finite steps it doubles.
- `mixed_bfloat16`: layers compute in bfloat16, which has float32's exponent range: no loss
  scaling. For CPUs with AVX512-BF16 / AMX, TPUs and Ampere or later GPUs.

Under every policy the models' outputs are float32: their last layers compute in float32
(`sketch_tf.models.layers.float32_output`, `L2Normalize`, the logit layers), so the losses,
the domain classifier's logits, L2-normalised embeddings, evaluation and every exported
signature are float32; BatchNormalization computes its statistics in float32 by itself
(Keras). `policy` sets the global policy only while models are built: layers keep the policy
they were built with, and nothing leaks into code that runs later in the same process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from sketch_tf.models.layers import dtype_policy
from sketch_tf.train.config_sections import PRECISIONS

__all__ = [
    "PRECISIONS",
    "check_float32_outputs",
    "device_warning",
    "loss_scale",
    "policy",
    "uses_loss_scaling",
    "wrap_optimizer",
]


def _check_name(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {precision!r}")


@contextlib.contextmanager
def policy(precision: str) -> Iterator[None]:
    """Sets Keras' global dtype policy to `precision` (one of `PRECISIONS`) inside the block
    and restores the one that was set before on the way out (also on an error)."""
    _check_name(precision)
    with dtype_policy(precision):
        yield


def uses_loss_scaling(precision: str) -> bool:
    """True for `mixed_float16`, the only precision whose gradients need loss scaling."""
    _check_name(precision)
    return precision == "mixed_float16"


def wrap_optimizer(
    optimizer: keras.optimizers.Optimizer, precision: str
) -> keras.optimizers.Optimizer:
    """`optimizer` wrapped in a dynamic `keras.optimizers.LossScaleOptimizer` (initial scale
    2**15, doubled after 2000 finite steps) for `mixed_float16`, else `optimizer` itself.
    Call under the strategy's scope, before `build`."""
    if uses_loss_scaling(precision):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def loss_scale(optimizer: keras.optimizers.Optimizer):
    """The factor the loop's loss is multiplied by: a LossScaleOptimizer's current dynamic
    scale (a float32 scalar tensor), 1.0 for any other optimizer."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return tf.convert_to_tensor(optimizer.dynamic_scale)
    return 1.0


def check_float32_outputs(models: dict[str, Any], precision: str) -> None:
    """Raises ValueError naming the model and its output dtype when a model built under
    `precision` gives anything but float32 (its last layer must compute in float32:
    `sketch_tf.models.layers.float32_output`). Models without symbolic outputs (subclassed)
    are not checked."""
    for name, model in models.items():
        for i, output in enumerate(getattr(model, "outputs", None) or []):
            dtype = str(getattr(output, "dtype", "float32"))
            if dtype != "float32":
                raise ValueError(
                    f"model {name!r} output {i} is {dtype} under train.precision={precision}: "
                    "its last layer must compute in float32 (dtype='float32'; "
                    "sketch_tf.models.layers.float32_output)"
                )


def device_warning(precision: str) -> str | None:
    """A warning for the log when `precision` does not fit the visible devices, else None:
    `mixed_float16` without a GPU runs float16 in software on CPUs (slower than float32, and
    no memory saved that matters there). Not an error: the same config is validated and
    smoke-tested on CPU machines before it runs on a GPU host."""
    _check_name(precision)
    if precision == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        return (
            "warning: train.precision=mixed_float16 but no GPU is visible: float16 runs "
            "emulated on CPUs, slower than float32 (use mixed_bfloat16 or float32 on CPUs)"
        )
    return None
