"""Derived-data cache (sketch_tf.data.cache): keys, reuse, invalidation, atomic writes."""

import glob
import io
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.data import cache, pipeline, schema, tfrecord
from sketch_tf.models.backbones import build_backbone

SIZE = 16


def _png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _records(path, seeds, classes=("a", "b")):
    """A labelled-image dataset at `path`: one photo per seed, classes alternating."""
    with tfrecord.ShardedWriter(path, schema.KIND_LABELLED_IMAGE, classes=list(classes),
                                overwrite=True) as w:  # fmt: skip
        for i, seed in enumerate(seeds):
            c = i % len(classes)
            w.write(
                schema.encode_labelled_image(_png(seed), c, classes[c], "photo", f"img{seed}"),
                class_id=c, class_name=classes[c], domain="photo",
            )  # fmt: skip
    return str(path)


def _model(seed=0):
    tf.keras.utils.set_random_seed(seed)
    return build_backbone("small_cnn", SIZE, widths=(4,), pooling="max")


def _cached(path, model, log=None, spec=None, root=None, dtype="float32"):
    return cache.cached_features(
        root or path, "photo_features", spec or {"size": SIZE}, model,
        pipeline.labelled_image_bytes(path), lambda e: pipeline.preprocess(e, False, SIZE, False),
        batch_size=3, dtype=dtype, log=(log.append if log is not None else (lambda m: None)),
    )  # fmt: skip


def _direct(path, model):
    """{key: model(preprocessed image)} computed without the cache."""
    out = {}
    for k, e in pipeline.labelled_image_bytes(path):
        x = pipeline.preprocess(e, False, SIZE, False)[None]
        out[int(k)] = model(x, training=False).numpy()[0]
    return out


def test_image_keys_are_fingerprints_of_the_bytes():
    a, b = _png(1), _png(2)
    keys = cache.image_keys(tf.constant([a, b, a])).numpy()
    assert keys.dtype == np.int64 and keys[0] == keys[2] != keys[1]
    assert int(cache.image_keys(tf.constant(a))) == keys[0]  # scalars too


def test_float16_entries_are_their_own_and_reload_without_rebuilding(tmp_path):
    path = _records(tmp_path / "rec", range(5))
    model = _model()
    log = []
    half = _cached(path, model, log, dtype="float16")
    assert half.values.dtype == np.float16 and half.computed == 5
    full = _cached(path, model, dtype="float32")
    assert full.computed == 5 and full.path != half.path  # another entry, not a conversion
    np.testing.assert_allclose(half.values.astype(np.float32), full.values, rtol=1e-3, atol=1e-3)
    again = _cached(path, model, log, dtype="float16")  # the probe accepts the rounding
    assert again.computed == 0 and "stale" not in " ".join(log)
    looked = half.lookup()(tf.constant(half.keys[:2]))
    assert looked.dtype == tf.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        _cached(path, model, dtype="bfloat16")


def test_cache_values_reuse_and_lookup(tmp_path):
    path = _records(tmp_path / "rec", range(7))
    model = _model()
    log = []
    first = _cached(path, model, log)
    assert first.computed == 7 and len(first.keys) == 7 and "computed 7 of 7" in log[-1]
    direct = _direct(path, model)
    for k, v in zip(first.keys, first.values, strict=True):
        np.testing.assert_allclose(v, direct[int(k)], rtol=1e-6, atol=1e-7)
    entry = os.path.dirname(
        glob.glob(str(tmp_path / "rec" / "cache" / "photo_features-*" / "*.npz"))[0]
    )
    assert os.path.isfile(os.path.join(entry, "spec.json"))
    # Second load: nothing computed but the probe, same values.
    again = _cached(path, model)
    assert again.computed == 0 and again.path == first.path
    np.testing.assert_array_equal(again.values, first.values)
    # Lookup inside tf.data, and a clear error for an unknown key.
    fn = first.lookup("test photos")
    ds = pipeline.labelled_image_bytes(path).map(lambda k, e: fn(k))
    got = np.stack(list(ds.as_numpy_iterator()))
    want = np.stack([direct[int(k)] for k, _ in pipeline.labelled_image_bytes(path)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(tf.errors.InvalidArgumentError, match="test photos: an image is not in"):
        fn(tf.constant([12345], tf.int64))


def test_cache_invalidates_when_the_trunk_or_spec_changes(tmp_path):
    path = _records(tmp_path / "rec", range(5))
    a = _cached(path, _model(0))
    other = _model(1)  # other weights -> another entry, never the old values
    b = _cached(path, other)
    assert b.path != a.path and b.computed == 5
    assert not np.allclose(a.values, b.values)
    c = _cached(path, _model(0), spec={"size": SIZE, "cut": "other"})
    assert c.path not in (a.path, b.path) and c.computed == 5


def test_cache_completes_when_images_change(tmp_path):
    # The cache in its own folder (data.cache_dir): rewriting the records folder with
    # prepare_data.py would remove a cache inside it.
    path, root = _records(tmp_path / "rec", range(5)), str(tmp_path / "elsewhere")
    model = _model()
    first = _cached(path, model, root=root)
    # The records are rewritten: seeds 3, 4 replaced by 10, 11 (new bytes, new keys).
    _records(tmp_path / "rec", [0, 1, 2, 10, 11])
    log = []
    second = _cached(path, model, log, root=root)
    assert second.path == first.path
    assert second.computed == 2 and "computed 2 of 5" in log[-1]
    direct = _direct(path, model)
    assert set(direct) <= set(second.keys.tolist()) and len(second.keys) == 7  # old ones kept
    lookup = second.lookup()
    for k, v in direct.items():
        np.testing.assert_allclose(lookup(tf.constant([k]))[0], v, rtol=1e-6, atol=1e-7)
    # A subset of the records (e.g. the unseen classes) reads the same entry.
    subset = pipeline.labelled_image_bytes(path, classes=["a"])
    log = []
    third = cache.cached_features(
        root, "photo_features", {"size": SIZE}, model, subset,
        lambda e: pipeline.preprocess(e, False, SIZE, False), log=log.append,
    )  # fmt: skip
    assert third.path == first.path and third.computed == 0 and len(third.keys) == 7


def test_cache_probe_rebuilds_a_stale_entry(tmp_path):
    path = _records(tmp_path / "rec", range(4))
    model = _model()
    first = _cached(path, model)
    # Values that no longer match the computation (as after a code or library change).
    np.savez(os.path.join(first.path, "features.npz"), keys=first.keys, values=first.values + 1.0)
    log = []
    again = _cached(path, model, log)
    assert again.computed == 4 and any("probe images differ" in m for m in log)
    np.testing.assert_allclose(again.values, first.values, rtol=1e-6)
    # An unreadable file is rebuilt too.
    with open(os.path.join(first.path, "features.npz"), "wb") as f:
        f.write(b"garbage")
    assert _cached(path, model).computed == 4


def test_cache_unwritable_folder_names_the_flag(tmp_path):
    path = _records(tmp_path / "rec", range(3))
    blocker = tmp_path / "a_file"  # a cache_dir that cannot hold folders (works as root too)
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"cannot write .*a_file.*--config.data.cache_dir"):
        _cached(path, _model(), root=str(blocker))


def test_cache_write_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path, root = _records(tmp_path / "rec", range(3)), str(tmp_path / "elsewhere")
    model = _model()
    first = _cached(path, model, root=root)
    _records(tmp_path / "rec", [0, 1, 7])  # one new image -> the entry is rewritten

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="cannot write .*No space left"):
        _cached(path, model, root=root)
    monkeypatch.undo()
    leftovers = [f for f in os.listdir(first.path) if f.startswith(".features-")]
    assert not leftovers
    with np.load(os.path.join(first.path, "features.npz")) as data:
        np.testing.assert_array_equal(data["keys"], first.keys)  # the previous file, intact


def test_one_pass_writes_the_entries_of_separate_passes(tmp_path):
    path = _records(tmp_path / "rec", range(5))
    tf.keras.utils.set_random_seed(0)
    deep = build_backbone("small_cnn", SIZE, widths=(4, 8), pooling="max")
    shallow = build_backbone("small_cnn", SIZE, widths=(4,), pooling="avg")
    for name in ("block0_conv", "block0_bn"):  # another model object, the same first block
        shallow.get_layer(name).set_weights(deep.get_layer(name).get_weights())
    entries = [
        cache.CacheEntry("deep", {"n": 1}, deep),
        cache.CacheEntry("shallow", {"n": 2}, shallow),
        cache.CacheEntry("other", {"n": 1}, _model(1), "float16"),  # other weights: not shared
    ]
    images = pipeline.labelled_image_bytes(path)

    def run(root, log, which=None):
        return cache.cached_feature_entries(
            str(tmp_path / root), [entries[i] for i in which or range(3)], images,
            lambda e: pipeline.preprocess(e, False, SIZE, False), batch_size=3, log=log.append,
        )  # fmt: skip

    log = []
    joint = run("joint", log)
    # Block 0 (conv, BN, ReLU, pool) of `deep` and `shallow` runs once: 15 of their 19 calls.
    assert [j.computed for j in joint] == [5, 5, 5] and "in one pass (15 of 19 layer" in log[0]
    separate = [run("separate", [], [i])[0] for i in range(3)]
    for j, s, e in zip(joint, separate, entries, strict=True):
        assert os.path.basename(j.path) == os.path.basename(s.path)  # the same entry names
        np.testing.assert_array_equal(j.keys, s.keys)
        np.testing.assert_array_equal(j.values, s.values)
        direct = _direct(path, e.model)
        want = np.stack([direct[int(k)] for k in j.keys]).astype(e.dtype)
        np.testing.assert_allclose(j.values, want, rtol=1e-6, atol=1e-6)
    # Only the missing entry runs; an entry written by one path is read by the other.
    shutil.rmtree(joint[1].path)
    log = []
    again = run("joint", log)
    assert [a.computed for a in again] == [0, 5, 0] and len(log) == 1 and "shallow" in log[0]
    assert [a.computed for a in run("separate", [])] == [0, 0, 0]
    with pytest.raises(ValueError, match="distinct names"):
        run("joint", [], [0, 0])
