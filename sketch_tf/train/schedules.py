"""Schedules: the gradient-reversal lambda per epoch and learning rates per step.

`grl_lambda` is plain Python (called once per epoch by the loop, which then calls
``GradientReversal.set_lambda``). `build_lr_schedule` turns a small config into a
``keras.optimizers.schedules.LearningRateSchedule`` evaluated per optimizer step.
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["GRL_SCHEDULES", "LR_SCHEDULES", "ConstantLR", "build_lr_schedule", "grl_lambda"]

#: Names accepted by `grl_lambda`.
GRL_SCHEDULES = ("intended_ramp", "upstream_step", "constant")

#: Names accepted by `build_lr_schedule` (config key ``name``).
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


def _get(config, key, default=None):
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default) if hasattr(config, key) else default


def build_lr_schedule(config) -> keras.optimizers.schedules.LearningRateSchedule:
    """Learning-rate schedule from a dict or ``ml_collections.ConfigDict``.

    Keys (per optimizer step, 0-based):

    - ``name``: ``"constant"`` (default), ``"cosine"`` or ``"piecewise"``.
    - ``learning_rate``: peak / base rate (float > 0; required except for piecewise).
    - ``warmup_steps``: linear warmup from 0 to ``learning_rate`` (constant, cosine; default 0).
    - cosine: ``decay_steps`` (> 0, counted after the warmup) and ``alpha`` (final rate as a
      fraction of ``learning_rate``, default 0): ``lr = learning_rate * (alpha + (1 - alpha) *
      0.5 * (1 + cos(pi * min(step - warmup, decay_steps) / decay_steps)))``.
    - piecewise: ``boundaries`` (increasing step numbers) and ``values`` (one more than
      boundaries): ``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``.

    Returns:
      a ``keras.optimizers.schedules.LearningRateSchedule``.
    """
    name = _get(config, "name", "constant")
    if name not in LR_SCHEDULES:
        raise ValueError(f"build_lr_schedule: name must be one of {LR_SCHEDULES}, got {name!r}")
    if name == "piecewise":
        boundaries = list(_get(config, "boundaries", None) or [])
        values = [float(v) for v in (_get(config, "values", None) or [])]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                "build_lr_schedule: piecewise needs len(values) == len(boundaries) + 1, got "
                f"{len(boundaries)} boundaries and {len(values)} values"
            )
        if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:], strict=False)):
            raise ValueError(f"build_lr_schedule: boundaries must increase, got {boundaries}")
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(b) for b in boundaries], values
        )

    lr = _get(config, "learning_rate", None)
    if lr is None or float(lr) <= 0:
        raise ValueError(f"build_lr_schedule: learning_rate must be > 0, got {lr!r}")
    lr = float(lr)
    warmup = int(_get(config, "warmup_steps", 0) or 0)
    if warmup < 0:
        raise ValueError(f"build_lr_schedule: warmup_steps must be >= 0, got {warmup}")
    if name == "constant":
        return ConstantLR(lr, warmup)
    decay_steps = _get(config, "decay_steps", None)
    if decay_steps is None or int(decay_steps) <= 0:
        raise ValueError(f"build_lr_schedule: cosine needs decay_steps > 0, got {decay_steps!r}")
    alpha = float(_get(config, "alpha", 0.0) or 0.0)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(lr, int(decay_steps), alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, int(decay_steps), alpha=alpha, warmup_target=lr, warmup_steps=warmup
    )
