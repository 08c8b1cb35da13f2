"""Schedules: the gradient-reversal lambda per epoch and learning rates per step.

`grl_lambda` is plain Python (called before each step by the zs_sbir-style tasks, which then
call ``GradientReversal.set_lambda``). `learning_rate_schedule` turns `config.train` into a
``keras.optimizers.schedules.LearningRateSchedule`` evaluated per optimizer step; it is the
only learning-rate builder (the loop's optimizer uses it).
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["GRL_SCHEDULES", "LR_SCHEDULES", "ConstantLR", "grl_lambda", "learning_rate_schedule"]

#: Names accepted by `grl_lambda`.
GRL_SCHEDULES = ("intended_ramp", "upstream_step", "constant")

#: Values of `config.train.lr_schedule`.
LR_SCHEDULES = ("constant", "cosine", "piecewise")


def grl_lambda(
    epoch,
    schedule: str = "intended_ramp",
    start_epoch: int = 5,
    threshold_epoch: int = 25,
    value: float = 1.0,
) -> float:
    """Gradient-reversal lambda for a (0-based) epoch.

    - ``"intended_ramp"`` (default, what the zero-shot SBIR paper describes): 0 for
      ``epoch < start_epoch``, then ``value * (epoch - start_epoch) / (threshold_epoch -
      start_epoch)`` rising linearly, and ``value`` from ``threshold_epoch`` on. Requires
      ``threshold_epoch > start_epoch``.
    - ``"upstream_step"`` (the public code's behaviour, for reproduction only): 0 for
      ``epoch < max(start_epoch, threshold_epoch)``, then ``value``.
    - ``"constant"``: ``value`` at every epoch.

    Args:
      epoch: epoch number (int or float, >= 0).
      schedule: one of `GRL_SCHEDULES`.
      start_epoch, threshold_epoch: epochs as described above.
      value: final lambda.

    Returns:
      python float.
    """
    epoch = float(epoch)
    if epoch < 0 or math.isnan(epoch):
        raise ValueError(f"grl_lambda: epoch must be >= 0, got {epoch}")
    if schedule == "constant":
        return float(value)
    if schedule == "upstream_step":
        return float(value) if epoch >= max(start_epoch, threshold_epoch) else 0.0
    if schedule == "intended_ramp":
        if threshold_epoch <= start_epoch:
            raise ValueError(
                "grl_lambda: intended_ramp needs threshold_epoch > start_epoch, got "
                f"start_epoch={start_epoch}, threshold_epoch={threshold_epoch}"
            )
        if epoch < start_epoch:
            return 0.0
        if epoch >= threshold_epoch:
            return float(value)
        return float(value) * (epoch - start_epoch) / (threshold_epoch - start_epoch)
    raise ValueError(f"grl_lambda: schedule must be one of {GRL_SCHEDULES}, got {schedule!r}")


@keras.saving.register_keras_serializable(package="sketch_tf")
class ConstantLR(keras.optimizers.schedules.LearningRateSchedule):
    """Constant learning rate with an optional linear warmup from 0.

    ``lr(step) = learning_rate * min(1, step / warmup_steps)`` (``learning_rate`` when
    ``warmup_steps == 0``). `step` is the optimizer iteration (0-based).
    """

    def __init__(self, learning_rate: float, warmup_steps: int = 0):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        lr = ops.cast(self.learning_rate, "float32")
        if self.warmup_steps <= 0:
            return lr
        frac = ops.minimum(ops.cast(step, "float32") / float(self.warmup_steps), 1.0)
        return lr * frac

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def learning_rate_schedule(train):
    """Learning rate per optimizer step (0-based) from `config.train` (the one LR builder).

    - ``lr_schedule="constant"``: `learning_rate`, after a linear warmup from 0 over
      `warmup_steps` when that is > 0 (a `ConstantLR`);
    - ``"cosine"``: linear warmup from 0 over `warmup_steps`, then cosine decay from
      `learning_rate` to 0 at step `num_steps`;
    - ``"piecewise"``: ``learning_rate * lr_values[i]`` between the step `lr_boundaries`
      (``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``).

    `validate_train_config` has checked the fields; this only builds.

    Returns:
      a ``keras.optimizers.schedules.LearningRateSchedule``.
    """
    base = float(train.learning_rate)
    warm = int(train.warmup_steps)
    if train.lr_schedule == "constant":
        return ConstantLR(base, warm)
    if train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warm else base,
            decay_steps=max(1, int(train.num_steps) - warm),
            warmup_target=base if warm else None,
            warmup_steps=warm,
        )
    if train.lr_schedule == "piecewise":
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(b) for b in train.lr_boundaries], [base * float(v) for v in train.lr_values]
        )
    raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {train.lr_schedule!r}")
