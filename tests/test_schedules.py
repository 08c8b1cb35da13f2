"""Tests for sketch_tf.train.schedules (hand-computed expected values)."""

import keras
import numpy as np
import pytest

from sketch_tf.train.config_sections import base_train_config, validate_train_config
from sketch_tf.train.schedules import ConstantLR, grl_lambda, learning_rate_schedule

EPOCHS = (0, 4, 5, 15, 25, 40)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # 0 before epoch 5, (epoch - 5) / 20 up to 25, then 1.
        ("intended_ramp", [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]),
        # 0 until max(5, 25) = 25, then 1.
        ("upstream_step", [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]),
        ("constant", [1.0] * 6),
    ],
)
def test_grl_lambda_default_epochs(schedule, expected):
    assert [grl_lambda(e, schedule) for e in EPOCHS] == pytest.approx(expected)


def test_grl_lambda_other_parameters():
    # Ramp from 2 to 6 scaled by 0.5: epoch 3 -> 0.5 * 1/4.
    assert grl_lambda(3, start_epoch=2, threshold_epoch=6, value=0.5) == pytest.approx(0.125)
    assert grl_lambda(6, start_epoch=2, threshold_epoch=6, value=0.5) == pytest.approx(0.5)
    # upstream_step with threshold below start jumps at start.
    assert grl_lambda(4, "upstream_step", start_epoch=5, threshold_epoch=3) == 0.0
    assert grl_lambda(5, "upstream_step", start_epoch=5, threshold_epoch=3) == 1.0
    assert grl_lambda(7, "constant", value=0.2) == pytest.approx(0.2)


def test_grl_lambda_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule must be one of"):
        grl_lambda(1, "linear")
    with pytest.raises(ValueError, match="threshold_epoch > start_epoch"):
        grl_lambda(1, start_epoch=5, threshold_epoch=5)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        grl_lambda(-1)


def _values(schedule, steps):
    return [float(schedule(step)) for step in steps]


def _train(**fields):
    train = base_train_config()
    train.update(fields)
    return train


def test_constant_schedule_with_and_without_warmup():
    sched = learning_rate_schedule(_train(learning_rate=0.1))
    assert _values(sched, [0, 10, 1000]) == pytest.approx([0.1, 0.1, 0.1])
    sched = learning_rate_schedule(_train(learning_rate=0.2, warmup_steps=4))
    assert _values(sched, [0, 1, 2, 4, 100]) == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.2])


def test_cosine_schedule_with_warmup():
    train = _train(num_steps=100, lr_schedule="cosine", warmup_steps=10, learning_rate=1.0)
    sched = learning_rate_schedule(train)
    # Warmup 0 -> 1 over 10 steps, then 0.5 * (1 + cos(pi * t / 90)), t = step - 10.
    got = _values(sched, [0, 5, 10, 55, 100, 500])
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_cosine_schedule_without_warmup():
    sched = learning_rate_schedule(_train(num_steps=4, lr_schedule="cosine", learning_rate=0.5))
    # 0.5 * 0.5 * (1 + cos(pi * s / 4)) for s = 0, 2, 4.
    np.testing.assert_allclose(_values(sched, [0, 2, 4, 9]), [0.5, 0.25, 0.0, 0.0], atol=1e-7)


def test_piecewise_schedule():
    train = _train(
        lr_schedule="piecewise", learning_rate=2.0, lr_boundaries=(10, 20),
        lr_values=(1.0, 0.1, 0.01),
    )  # fmt: skip
    np.testing.assert_allclose(
        _values(learning_rate_schedule(train), [0, 10, 11, 20, 21, 99]),
        [2.0, 2.0, 0.2, 0.2, 0.02, 0.02],
        rtol=1e-6,
    )


def test_schedules_drive_an_optimizer_and_serialise():
    sched = learning_rate_schedule(_train(learning_rate=0.3, warmup_steps=2))
    assert isinstance(sched, keras.optimizers.schedules.LearningRateSchedule)
    opt = keras.optimizers.SGD(learning_rate=sched)
    var = keras.Variable(np.zeros(1, np.float32))
    for _ in range(3):
        opt.apply_gradients([(np.ones(1, np.float32), var)])
    # lr at iterations 0, 1, 2 = 0, 0.15, 0.3 -> var = -(0 + 0.15 + 0.3)
    np.testing.assert_allclose(var.numpy(), [-0.45], atol=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    assert isinstance(clone, ConstantLR) and clone.get_config() == sched.get_config()


def test_bad_schedule_fields_are_config_errors():
    problems = validate_train_config(_train(lr_schedule="step"))
    assert any("train.lr_schedule must be one of" in p for p in problems)
    problems = validate_train_config(
        _train(lr_schedule="piecewise", lr_boundaries=(5,), lr_values=(1.0,))
    )
    assert any("one more entry" in p for p in problems)
    assert any(
        "learning_rate must be > 0" in p for p in validate_train_config(_train(learning_rate=0.0))
    )
