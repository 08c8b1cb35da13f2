"""`train.precision`: the config key, the dtype policy (set while the models are built, never
leaked), loss scaling for mixed_float16 (scaled loss, unscaled gradients, skipped steps, the
replicas agreeing on a skip), and a mixed_bfloat16 run of every family whose loss is finite
and whose export gives float32 outputs. All families share this module's TF process."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.train import loop, precision
from sketch_tf.train.config import ConfigError, migrate, validate_config
from sketch_tf.train.config_sections import base_train_config, validate_train_config
from tests import tiny_task
from tests.conftest import requires_hed


@pytest.fixture(autouse=True)
def float32_policy_around_each_test():
    """Every test starts and must end under the float32 policy (nothing leaks)."""
    assert keras.config.dtype_policy().name == "float32"
    yield
    assert keras.config.dtype_policy().name == "float32", "a test leaked its dtype policy"


# ---- config -----------------------------------------------------------------------------------
def test_precision_key_default_validation_and_migration():
    train = base_train_config()
    assert train.precision == "float32" and not validate_train_config(train)
    train.precision = "float16"
    (problem,) = validate_train_config(train)
    assert "train.precision must be one of" in problem and "'float16'" in problem
    config = tiny_task.get_config()
    config.train.precision = "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        validate_config(config)
    # A run folder written before the key existed trained in float32.
    old = tiny_task.get_config()
    del old.train["precision"]
    assert migrate(old).train.precision == "float32"


def test_policy_is_restored_also_on_error():
    with precision.policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    with pytest.raises(RuntimeError), precision.policy("mixed_float16"):
        raise RuntimeError("build failed")
    with pytest.raises(ValueError, match="train.precision must be one of"):
        with precision.policy("float16"):
            pass


def test_device_warning_only_for_float16_without_gpu():
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert precision.device_warning("float32") is None
    assert precision.device_warning("mixed_bfloat16") is None
    warning = precision.device_warning("mixed_float16")
    assert (warning is None) == has_gpu
    if warning:
        assert "no GPU" in warning and "mixed_bfloat16" in warning


def test_models_with_mixed_outputs_are_refused():
    with precision.policy("mixed_bfloat16"):
        inp = keras.Input((4,))
        model = keras.Model(inp, keras.layers.Dense(2)(inp))
    with pytest.raises(ValueError, match="model 'head' output 0 is bfloat16.*float32"):
        precision.check_float32_outputs({"head": model}, "mixed_bfloat16")


# ---- loss scaling (mixed_float16, through the loop) -------------------------------------------
def _tiny(precision_name: str, **train):
    config = tiny_task.get_config()
    config.model.dropout = 0.0  # the same step in float32 and float16
    config.train.update(precision=precision_name, optimizer="sgd", momentum=0.0, **train)
    return config


def _weights(state):
    return [v.numpy().copy() for v in state.variables]


def _one_step(tmp_path, name, config, init_fn=None):
    """(weights before, weights after, state after) of one loop step from scratch."""
    seen = {}

    def capture(state):
        seen["before"] = _weights(state)
        if init_fn:
            init_fn(state)
        seen["state"] = state

    result = loop.train(tiny_task.TinyTask(config), str(tmp_path / name), init_fn=capture,
                        log=lambda s: None)  # fmt: skip
    assert result.status == "completed" and all(np.isfinite(list(result.losses.values())))
    return seen["before"], _weights(seen["state"]), seen["state"]


def test_float16_step_applies_the_unscaled_gradients(tmp_path):
    config = _tiny("float32", num_steps=1)
    before32, after32, _ = _one_step(tmp_path, "f32", config)
    config.train.precision = "mixed_float16"
    before16, after16, state = _one_step(tmp_path, "f16", config)
    assert isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer)
    assert state.models["trunk"].layers[1].compute_dtype == "float16"
    assert float(state.optimizer.dynamic_scale.numpy()) == 2.0**15  # no skip
    assert int(state.optimizer.iterations.numpy()) == 1
    for b32, b16 in zip(before32, before16, strict=True):
        np.testing.assert_array_equal(b32, b16)  # the same initialisation (seed)
    # The update of the scaled float16 step is the float32 update (to float16 rounding),
    # not 2**15 times it.
    for b, a32, a16 in zip(before32, after32, after16, strict=True):
        d32, d16 = a32 - b, a16 - b
        assert np.abs(d32).max() > 1e-4
        np.testing.assert_allclose(d16, d32, rtol=0.05, atol=2e-3 * np.abs(d32).max())


def test_overflowing_float16_gradients_skip_the_step_and_halve_the_scale(tmp_path):
    def huge_scale(state):  # 2**40 x the loss overflows float16 gradients (max 65504)
        state.optimizer.dynamic_scale.assign(2.0**40)

    config = _tiny("mixed_float16", num_steps=1)
    before, after, state = _one_step(tmp_path, "skip", config, init_fn=huge_scale)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)  # skipped: no weight moved
    assert float(state.optimizer.dynamic_scale.numpy()) == 2.0**39
    assert int(state.optimizer.iterations.numpy()) == 0
    # The loss scale is saved with the checkpoint: a resume goes on with it.
    resumed = loop.build_state(tiny_task.TinyTask(config))
    loop.restore_latest(resumed, str(tmp_path / "skip" / "ckpt"), for_training=True)
    assert float(resumed.optimizer.dynamic_scale.numpy()) == 2.0**39
    # Clipping (global norm, on the scaled gradients) skips the same way.
    config.train.clipnorm = 1.0
    before, after, state = _one_step(tmp_path, "skip_clip", config, init_fn=huge_scale)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(state.optimizer.dynamic_scale.numpy()) == 2.0**39


def test_clipping_sees_the_unscaled_norm(tmp_path):
    # clipnorm applies to the unscaled gradients: float16 + scale clips like float32.
    config = _tiny("float32", num_steps=1, clipnorm=0.01)
    b32, a32, _ = _one_step(tmp_path, "c32", config)
    config.train.precision = "mixed_float16"
    b16, a16, _ = _one_step(tmp_path, "c16", config)

    def norm(after, before):
        return np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before, strict=True)))

    lr = config.train.learning_rate
    assert norm(a32, b32) == pytest.approx(lr * 0.01, rel=1e-3)
    assert norm(a16, b16) == pytest.approx(lr * 0.01, rel=2e-2)


def test_replicas_agree_to_skip_when_one_overflows(two_cpu_strategy):
    """Replica 0's gradient is finite, replica 1's is inf: every replica skips the step (a
    LossScaleOptimizer alone would let each replica decide from its own gradients)."""
    strategy = two_cpu_strategy
    with strategy.scope():
        var = keras.Variable(np.ones(3, np.float32), name="w")
        optimizer = precision.wrap_optimizer(keras.optimizers.SGD(0.1), "mixed_float16")
        optimizer.build([var])

    @tf.function
    def step(agree):
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            grad = tf.where(rid == 0, tf.ones(3), tf.fill([3], float("inf")))
            grads = loop.agree_on_finite([None, grad]) if agree else [None, grad]
            optimizer.apply_gradients([(grads[1], var)])

        strategy.run(replica_fn)

    step(True)
    np.testing.assert_array_equal(var.numpy(), np.ones(3))
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**14

    # Both finite: the unscaled gradients (2**14 / 2**14 = 1 per replica), summed over the
    # two replicas, are applied.
    @tf.function
    def finite_step():
        def replica_fn():
            grads = loop.agree_on_finite([tf.fill([3], 2.0**14)])
            optimizer.apply_gradients([(grads[0], var)])

        strategy.run(replica_fn)

    finite_step()
    np.testing.assert_allclose(var.numpy(), np.ones(3) - 0.1 * 2.0, rtol=1e-6)


def test_mirrored_float16_run_matches_one_replica(tmp_path, two_cpu_strategy):
    config = _tiny("mixed_float16", num_steps=3)
    one = loop.train(tiny_task.TinyTask(config), str(tmp_path / "one"), log=lambda s: None)
    two = loop.train(tiny_task.TinyTask(config), str(tmp_path / "two"), two_cpu_strategy,
                     log=lambda s: None)  # fmt: skip
    assert two.losses["total"] == pytest.approx(one.losses["total"], rel=1e-2)


# ---- every family under mixed_bfloat16 --------------------------------------------------------
def _zooms(base):
    from sketch_tf.data.synthetic import prepare_synthetic
    from tests.families.zooms.test_task import tiny_config

    config = tiny_config(base / "records")
    prepare_synthetic("zooms", config.data.root, **config.data.synthetic.to_dict())
    return config


def _zs_sbir(base):
    from sketch_tf.data.synthetic.prepare import prepare_synthetic
    from tests.families.zs_sbir.test_task import CATS, _config

    root = str(base / "records")
    prepare_synthetic("zs_sbir", root, image_size=48, n_per_category=4, test_fraction=0.5,
                      categories=CATS)  # fmt: skip
    return _config(root)


def _style_sbir(base):
    from tests.families.style_sbir.test_task import _config, write_style_records

    write_style_records(base / "records" / "train", per_group=3)
    write_style_records(base / "records" / "test", per_group=2)
    return _config(str(base / "records"))


def _fg_sbir(base):
    from tests.families.fg_sbir.test_task import N_TEST, N_TRAIN, _config, _write_split

    _write_split(base / "records" / "train", 0, N_TRAIN, with_pairs=True)
    _write_split(base / "records" / "val", 100, N_TEST, with_pairs=True)
    return _config(str(base / "records"))


FAMILY_CONFIGS = {
    "zooms": _zooms,
    "zs_sbir": _zs_sbir,
    "style_sbir": _style_sbir,
    "fg_sbir": pytest.param(_fg_sbir, marks=requires_hed),
}


@pytest.mark.parametrize("make_config", list(FAMILY_CONFIGS.values()), ids=list(FAMILY_CONFIGS))
def test_mixed_bfloat16_family_trains_finite_and_exports_float32(make_config, tmp_path):
    from sketch_tf.export import serving
    from sketch_tf.train.run import load_run, train_run

    config = make_config(tmp_path)
    config.train.precision = "mixed_bfloat16"
    validate_config(config)
    workdir = str(tmp_path / "run")
    result = train_run(config, workdir, log=lambda s: None)
    assert result.status == "completed"
    assert result.losses and all(np.isfinite(v) for v in result.losses.values()), result.losses

    run = load_run(workdir, config)
    computes = {
        layer.compute_dtype
        for model in run.models.values()
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if layer.weights
    }
    assert "bfloat16" in computes  # the models were really built under the policy
    for name, model in run.models.items():
        assert all(str(o.dtype) == "float32" for o in model.outputs), name
    path = serving.export_run(run, str(tmp_path / "export"), model_name="mixed")
    loaded = tf.saved_model.load(path)
    floats = {}
    for sig_name, sig in loaded.signatures.items():
        for key, spec in sig.structured_outputs.items():
            if spec.dtype.is_floating:
                floats[f"{sig_name}/{key}"] = spec.dtype
    assert floats and set(floats.values()) == {tf.float32}, floats
    # And the values of the served default signature on its own warmup request.
    from sketch_tf.export import warmup

    requests = warmup.read_warmup_requests(os.path.join(path, serving.WARMUP_FILE))
    request = next(r for r in requests if r["signature"] == "serving_default")
    out = loaded.signatures["serving_default"](
        **{k: tf.constant(v) for k, v in request["inputs"].items()}
    )
    for key, value in out.items():
        if value.dtype.is_floating:
            assert value.dtype == tf.float32 and np.all(np.isfinite(value.numpy())), key
