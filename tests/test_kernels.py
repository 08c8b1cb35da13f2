"""Tests for sketch_tf.core.kernels: both implementations of every dual op give the same values,
and the per-machine chooser (cache hit / miss, overrides, corrupt cache) with injected timings,
so that no test depends on how fast this machine is."""

import json
import logging
import math
import threading

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.core import kernels
from sketch_tf.data import pipeline, zooms
from sketch_tf.train import config_sections


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache file and chooser state; no choice from the environment."""
    path = tmp_path / "kernels.json"
    monkeypatch.setenv(kernels.ENV_CACHE, str(path))
    monkeypatch.delenv(kernels.ENV_CHOICE, raising=False)
    kernels.reset()
    yield path
    kernels.reset()


def _toy(name="toy"):
    return kernels.DualKernel(
        name,
        tf.function(lambda x: x * 2.0, jit_compile=True),
        lambda x: x + x,
        lambda size: (tf.ones([size]),),
        8,
    )


def _inject(monkeypatch, xla_ms, tf_ms):
    """Replaces `kernels.measure` with fixed timings; returns the list of its calls."""
    calls = []

    def fake(kernel, size):
        calls.append((kernel.name, size))
        return {"xla": xla_ms, "tf": tf_ms}

    monkeypatch.setattr(kernels, "measure", fake)
    return calls


def _entries(path):
    return json.loads(path.read_text())["entries"]


# ---- the chooser ------------------------------------------------------------------------------
def test_cache_miss_measures_picks_the_faster_and_writes_the_cache(cache, monkeypatch, caplog):
    calls = _inject(monkeypatch, xla_ms=3.0, tf_ms=1.0)
    kernel = _toy()
    with caplog.at_level(logging.INFO, logger="absl"):
        assert kernel.pick(16) is kernel.tf
        assert kernel.pick(16) is kernel.tf  # decided once per process
    assert calls == [("toy", 16)]
    key = f"{kernels.machine_key()} | toy@16"
    assert _entries(cache) == {key: {"xla_ms": 3.0, "tf_ms": 1.0, "choice": "tf"}}
    logged = [r.getMessage() for r in caplog.records if "kernel toy@16" in r.getMessage()]
    assert len(logged) == 1 and "xla 3 ms, tf 1 ms -> tf" in logged[0], logged
    # Another size is another decision.
    assert kernel.pick() is kernel.tf and calls[-1] == ("toy", 8)
    assert kernels.used() == {"toy@16": (kernel, 16), "toy@8": (kernel, 8)}


def test_cache_hit_does_not_measure(cache, monkeypatch):
    _inject(monkeypatch, xla_ms=1.0, tf_ms=2.0)
    assert kernels.choose(_toy(), 16) == "xla"
    # A new process (state reset) reads the file; the timings would now say "tf".
    kernels.reset()
    calls = _inject(monkeypatch, xla_ms=9.0, tf_ms=1.0)
    assert kernels.choose(_toy(), 16) == "xla" and calls == []
    # Keys include the ISA caps: an AVX2-capped process measures on its own.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    kernels.reset()
    assert kernels.choose(_toy(), 16) == "tf" and calls == [("toy", 16)]
    assert len(_entries(cache)) == 2


def test_overrides_env_config_and_context(cache, monkeypatch):
    calls = _inject(monkeypatch, xla_ms=1.0, tf_ms=2.0)
    kernel = _toy()
    kernels.configure("tf")
    assert kernels.choose(kernel) == "tf"
    monkeypatch.setenv(kernels.ENV_CHOICE, "xla")
    assert kernels.choose(kernel) == "xla"  # the environment beats the config
    with kernels.override("tf"):
        assert kernel.pick() is kernel.tf  # the override beats both
    assert kernels.choose(kernel) == "xla"
    assert calls == [] and not cache.exists()  # forced choices measure nothing
    monkeypatch.setenv(kernels.ENV_CHOICE, "auto")
    assert kernels.choose(kernel) == "xla" and calls == [("toy", 8)]
    monkeypatch.setenv(kernels.ENV_CHOICE, "fast")
    with pytest.raises(ValueError, match=r"\$SKETCH_TF_KERNELS must be one of"):
        kernels.choose(kernel)
    with pytest.raises(ValueError, match="train.kernels must be one of"):
        kernels.configure("gpu")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '["a list"]',
        '{"format": "other", "version": 1, "entries": {}}',
        '{"format": "sketch_tf kernel timings", "version": 1, "entries": {"k": {"choice": 3}}}',
    ],
)
def test_corrupt_cache_is_reported_and_rebuilt(cache, monkeypatch, caplog, content):
    cache.write_text(content)
    calls = _inject(monkeypatch, xla_ms=1.0, tf_ms=2.0)
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert kernels.choose(_toy()) == "xla"
    assert calls == [("toy", 8)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(str(cache) in w for w in warnings), warnings
    doc = json.loads(cache.read_text())
    assert doc["format"] == kernels.CACHE_FORMAT and list(doc["entries"]) == [
        f"{kernels.machine_key()} | toy@8"
    ]


def test_a_process_measuring_makes_the_others_wait_for_its_entry(cache, monkeypatch):
    # Another process holds the lock while it measures; this one waits, then takes its entry.
    calls = _inject(monkeypatch, xla_ms=1.0, tf_ms=2.0)
    key = f"{kernels.machine_key()} | toy@8"
    got = []
    with kernels._file_lock(str(cache) + ".lock"):
        worker = threading.Thread(target=lambda: got.append(kernels.choose(_toy())))
        worker.start()
        worker.join(0.3)  # blocked on the lock (or not yet started: same outcome)
        assert not got
        kernels._write_cache(str(cache), key, {"xla_ms": 5.0, "tf_ms": 1.0, "choice": "tf"})
    worker.join()
    assert got == ["tf"] and calls == []


def test_unwritable_cache_is_not_fatal(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(kernels.ENV_CACHE, str(blocker / "sub" / "kernels.json"))
    monkeypatch.delenv(kernels.ENV_CHOICE, raising=False)
    kernels.reset()
    _inject(monkeypatch, xla_ms=2.0, tf_ms=1.0)
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert kernels.choose(_toy()) == "tf"
    assert any("cannot be written" in r.getMessage() for r in caplog.records)
    kernels.reset()


def test_measures_eagerly_when_first_picked_inside_a_dataset_map(cache, monkeypatch):
    # The real `measure` (no timing asserted): first use while tf.data traces a map function.
    monkeypatch.setattr(kernels, "MEASURE_BUDGET_S", 0.0)
    kernel = _toy("toy_in_map")
    ds = tf.data.Dataset.range(3).map(
        lambda i: kernel.pick(4)(tf.fill([4], tf.cast(i, tf.float32)))
    )
    np.testing.assert_allclose(list(ds.as_numpy_iterator())[2], [4.0] * 4)
    (entry,) = _entries(cache).values()
    assert entry["choice"] in kernels.IMPLEMENTATIONS and entry["xla_ms"] > 0 and entry["tf_ms"] > 0


def test_config_key_is_validated():
    assert config_sections.KERNEL_CHOICES == kernels.CHOICES
    train = config_sections.base_train_config()
    assert train.kernels == "auto" and not config_sections.validate_train_config(train)
    train.kernels = "fastest"
    assert any(
        "train.kernels must be one of" in p for p in config_sections.validate_train_config(train)
    )


# ---- the two implementations agree ------------------------------------------------------------
def _both(kernel, *args):
    return kernel.xla(*args).numpy(), kernel.tf(*args).numpy()


def test_warp_implementations_agree():
    rng = np.random.default_rng(0)
    for i, (h, w, size) in enumerate([(37, 50, 30), (64, 64, 64), (227, 200, 224)]):
        img = tf.constant(rng.integers(0, 256, (h, w, 3)).astype(np.uint8))
        a, sh = rng.uniform(-0.4, 0.4), rng.uniform(0.7, 1.4)
        tx, ty = rng.uniform(-8, 8, 2)
        m6 = tf.constant([sh * math.cos(a), -math.sin(a), tx, math.sin(a), sh * math.cos(a), ty])
        x, t = _both(pipeline.WARP, img, tf.cast(m6, tf.float32), size)
        assert x.shape == t.shape == (size, size, 3)
        # Sample positions of up to ~250 px differ by float rounding (~1e-5 px) on noise.
        np.testing.assert_allclose(x, t, atol=1e-4, err_msg=str(i))


def test_color_jitter_implementations_agree():
    rng = np.random.default_rng(1)
    for i in range(4):
        image = tf.constant(rng.uniform(size=(24, 20, 3)).astype(np.float32))
        factors = pipeline.color_jitter_factors(tf.constant([i, 7], tf.int64))
        x, t = _both(pipeline.COLOR_JITTER, image, factors)
        np.testing.assert_allclose(x, t, atol=2e-5, err_msg=str(i))


def _views_inputs(rotated):
    rng = np.random.default_rng(2)
    images = tf.constant(rng.uniform(size=(2, 40, 50, 3)).astype(np.float32))
    points = tf.constant(rng.uniform(-5, 55, (2, 5, 2)).astype(np.float32))
    half = tf.constant(rng.uniform(3, 25, (2, 5, 3)).astype(np.float32))
    sign = tf.constant(np.where(rng.random((2, 5)) < 0.5, -1.0, 1.0).astype(np.float32))
    if not rotated:
        return images, points, half, sign, 12
    angles = tf.constant(rng.uniform(-3, 3, (2, 5)).astype(np.float32))
    return images, points, half, angles, sign, 12


@pytest.mark.parametrize("kernel", [zooms.VIEWS, zooms.VIEWS_ROTATED], ids=lambda k: k.name)
def test_view_sampler_implementations_agree(kernel):
    x, t = _both(kernel, *_views_inputs(kernel is zooms.VIEWS_ROTATED))
    assert x.shape == t.shape == (2, 5, 3, 12, 12, 3)
    np.testing.assert_allclose(x, t, atol=1e-4)


def test_area_shrink_and_stretch_implementations_agree():
    rng = np.random.default_rng(3)
    images = tf.constant(rng.uniform(size=(2, 23, 17, 3)).astype(np.float32))
    for factor in (1, 3, 4):
        x, t = _both(zooms.AREA_SHRINK, images, factor)
        np.testing.assert_allclose(x, t, atol=1e-6, err_msg=str(factor))
    views = rng.uniform(0.2, 0.7, (3, 4, 9, 9, 3)).astype(np.float32)
    views[0, 1, ..., 2] = 0.5  # a constant channel stays as it is
    x, t = _both(zooms.MINMAX_STRETCH, tf.constant(views))
    np.testing.assert_allclose(x, t, atol=1e-6)


def test_callers_dispatch_to_the_forced_path(cache, monkeypatch):
    # The training input and the zoom sampler give the same values on either path.
    monkeypatch.setattr(kernels, "measure", lambda *_: pytest.fail("a forced choice measured"))
    rng = np.random.default_rng(4)
    photo = tf.io.encode_png(rng.integers(0, 256, (40, 52, 3)).astype(np.uint8))
    images = tf.constant(rng.uniform(size=(2, 48, 48, 3)).astype(np.float32))
    points = tf.constant(rng.uniform(0, 48, (2, 4, 2)).astype(np.float32))
    out = {}
    for path in kernels.IMPLEMENTATIONS:
        with kernels.override(path):
            seed = tf.constant([3, 4], tf.int64)
            out[path] = [
                pipeline.augment_train_image(photo, False, 32, seed).numpy(),
                pipeline.augment_train_image(photo, True, 32, seed).numpy(),
            ] + [
                zooms.zoom_views(
                    images, points, view_size=12, reference_size=48, base_half_size=10.0,
                    antialias=True, max_rotation_deg=rot, seed=(1, 2),
                ).numpy()
                for rot in (0.0, 30.0)
            ]  # fmt: skip
    for i, (x, t) in enumerate(zip(out["xla"], out["tf"], strict=True)):
        np.testing.assert_allclose(x, t, atol=1e-4, err_msg=str(i))
    assert set(kernels.used()) == {
        "train_warp@32", "color_jitter@32", "area_shrink@4", "zoom_views@12",
        "zoom_views_rotated@12", "minmax_stretch@12",
    }  # fmt: skip
