"""Tests for sketch_tf.data.pipeline: each op eagerly and inside tf.data, batch streams."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.core.shape_buckets import pow2_at_least
from sketch_tf.data import pipeline, schema, tfrecord

SEED = tf.constant([3, 4], tf.int64)


def _enc(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _in_data(fn, *args):
    """Run fn(*args) inside Dataset.map and return the numpy result."""
    ds = tf.data.Dataset.from_tensors(tuple(args)).map(fn)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def test_decode_grey_and_rgba_on_white():
    grey = _enc(np.full((3, 4), 51))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red; others fully transparent black
    for run in (
        lambda e: pipeline.decode_image(e).numpy(),
        lambda e: _in_data(pipeline.decode_image, e),
    ):
        g = run(grey)
        assert g.shape == (3, 4, 3) and np.allclose(g, 0.2)
        r = run(_enc(rgba))
        np.testing.assert_allclose(r[0, 0], [1, 0, 0])
        np.testing.assert_allclose(r[1, 1], [1, 1, 1])  # transparent -> white paper


def test_resize_keep_aspect_pads_white():
    img = np.zeros((2, 4, 3), np.float32)  # black, wide
    for out in (
        pipeline.resize_keep_aspect(img, 8).numpy(),
        _in_data(lambda x: pipeline.resize_keep_aspect(x, 8), img),
    ):
        assert out.shape == (8, 8, 3)
        # content is 4 rows tall, centred: rows 2..5 black, rows 0,1,6,7 white
        np.testing.assert_allclose(out[2:6], 0.0, atol=1e-6)
        np.testing.assert_allclose(out[[0, 1, 6, 7]], 1.0)


def test_geometry_maps_points():
    img = np.zeros((10, 20, 3), np.float32)
    _, scale, offset = pipeline.resize_pad_geometry(img, 40)
    np.testing.assert_allclose(scale.numpy(), [2.0, 2.0])
    np.testing.assert_allclose(offset.numpy(), [0.0, 10.0])


def test_random_ops_deterministic_and_in_data():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(16, 16, 3)).astype(np.float32)
    ops = [
        pipeline.random_flip,
        pipeline.random_affine,
        pipeline.stroke_width_jitter,
        pipeline.color_jitter,
    ]
    for op in ops:
        eager = op(tf.constant(img), SEED).numpy()
        again = op(tf.constant(img), SEED).numpy()
        np.testing.assert_array_equal(eager, again)
        inside = _in_data(op, img, SEED)
        np.testing.assert_allclose(eager, inside, atol=1e-6)
        assert eager.shape == img.shape and eager.min() >= -1e-6 and eager.max() <= 1 + 1e-6


def test_flip_is_exact_mirror_or_identity():
    img = np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 12
    outs = {
        pipeline.random_flip(img, tf.constant([0, i], tf.int64)).numpy().tobytes()
        for i in range(20)
    }
    assert outs == {img.tobytes(), img[:, ::-1].tobytes()}


def test_affine_identity_and_rotation():
    img = np.ones((9, 9, 1), np.float32)
    img[4, 6] = 0.0  # ink 2 px right of the centre (4, 4)
    ident = pipeline.affine_matrix(0.0, 1.0, 0.0, 0.0, 9, 9)
    np.testing.assert_allclose(ident.numpy(), [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6)
    m = pipeline.affine_matrix(np.pi / 2, 1.0, 0.0, 0.0, 9, 9)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=img[None],
        transforms=m[None],
        output_shape=[9, 9],
        fill_value=1.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0].numpy()
    # +90 degrees in image coordinates (y down): (dx, dy) = (2, 0) -> (0, 2): below the centre
    assert out[6, 4, 0] == 0.0 and out.sum() == 80.0


def test_stroke_width_jitter_thickens_and_thins():
    img = np.ones((7, 7, 1), np.float32)
    img[3, 1:6] = 0.0  # 1-px line
    results = set()
    for i in range(30):
        out = pipeline.stroke_width_jitter(img, tf.constant([1, i], tf.int64)).numpy()
        results.add(int((out < 0.5).sum()))
    # thicker: rows 2..4 x cols 0..6 = 21 ink; same: 5; thinner: gone = 0
    assert results == {21, 5, 0}


def write_sbir_records(out):
    """Writes 3 classes x (sketch, photo) x 4 images to `out`, each pixel value encoding
    (class, domain, index) (`value_of`); returns `out`."""
    classes = ["a", "b", "c"]
    with tfrecord.ShardedWriter(
        out, "labelled_image", classes=classes, group_by="domain_class"
    ) as w:
        for cid, c in enumerate(classes):
            for dom in ("photo", "sketch"):
                for i in range(4):
                    v = 40 * cid + (20 if dom == "photo" else 0) + i
                    shape = (20, 10) if dom == "sketch" else (12, 16)
                    img = _enc(np.full((*shape, 3), v))
                    w.write(
                        schema.encode_labelled_image(img, cid, c, dom, f"{c}{i}"),
                        class_id=cid,
                        class_name=c,
                        domain=dom,
                    )
    return out


@pytest.fixture(scope="module")
def sbir_dir(tmp_path_factory):
    return write_sbir_records(tmp_path_factory.mktemp("sbir") / "ds")


def value_of(img):
    """The pixel value a `write_sbir_records` image was written with (its median)."""
    return int(round(float(np.median(img)) * 255))


def test_labelled_dataset_eval_and_filters(sbir_dir):
    ds = pipeline.labelled_dataset(sbir_dir, batch_size=5, image_size=8, domains=["sketch"])
    batches = list(ds)
    assert [int(b["class_id"].shape[0]) for b in batches] == [5, 5, 2]
    assert all((b["domain"].numpy() == b"sketch").all() for b in batches)
    ds = pipeline.labelled_dataset(sbir_dir, 4, 8, training=True, seed=3, classes=["b"])
    b = next(iter(ds))
    assert set(b["class_id"].numpy().tolist()) == {1}


@pytest.mark.parametrize("is_sketch", [True, False])
def test_augment_train_image_matches_per_op_composition(is_sketch):
    # Smooth 40x30 image: the fused single resample must agree with the per-op chain
    # (fit -> flip -> affine -> stroke jitter / colour jitter) drawn from the same seeds.
    yy, xx = np.mgrid[0:30, 0:40]
    arr = np.stack([xx * 6, yy * 8, 255 - xx * 3], -1).clip(0, 255)
    enc = tf.constant(_enc(arr))
    size = 24
    for i in range(6):
        seed = tf.constant([11, i], tf.int64)
        fast = pipeline.augment_train_image(enc, is_sketch, size, seed).numpy()
        assert fast.shape == (size, size, 3) and fast.dtype == np.float32
        np.testing.assert_array_equal(
            fast, pipeline.augment_train_image(enc, is_sketch, size, seed).numpy()
        )
        inside = _in_data(
            lambda e, s: pipeline.augment_train_image(e, is_sketch, size, s), enc, seed
        )
        np.testing.assert_allclose(fast, inside, atol=1e-6)
        img = pipeline.decode_image(enc)
        s = tf.random.experimental.stateless_split(seed, 3)
        if is_sketch:
            ref = pipeline.resize_keep_aspect(img, size, 1.0)
        else:
            ref = pipeline.resize_crop(img, size)
        ref = pipeline.random_affine(pipeline.random_flip(ref, s[0]), s[1], fill_value=1.0)
        if is_sketch:
            ref = pipeline.stroke_width_jitter(ref, s[2])
        else:
            ref = pipeline.color_jitter(ref, s[2])
        # One resample instead of two + uint8 rounding. Away from the borders only: a photo's
        # rotated corners now show the uncropped image instead of white fill.
        diff = np.abs(fast - ref.numpy())[4:-4, 4:-4]
        assert diff.mean() < 0.02 and np.median(diff) < 0.01, (i, diff.mean())


def test_training_warp_is_the_projective_transform_it_replaced():
    # The XLA resample of augment_train_image against ImageProjectiveTransformV3 (bilinear,
    # CONSTANT white fill), on the image as it is and padded white to its size bucket.
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (37, 50, 3)).astype(np.uint8)
    for i in range(5):
        a, sh = rng.uniform(-0.4, 0.4), rng.uniform(0.7, 1.4)
        tx, ty = rng.uniform(-8, 8, 2)
        m6 = np.array([sh * np.cos(a), -np.sin(a), tx, np.sin(a), sh * np.cos(a), ty], np.float32)
        ref = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.constant(img[None], tf.float32) / 255.0,
            transforms=tf.constant(np.concatenate([m6, [0.0, 0.0]])[None], tf.float32),
            output_shape=[30, 30],
            fill_value=1.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )[0].numpy()
        ours = pipeline._warp_xla(tf.constant(img), tf.constant(m6), 30).numpy()
        np.testing.assert_allclose(ours, ref, atol=2e-5, err_msg=str(i))
        padded = np.pad(img, [[0, 64 - 37], [0, 64 - 50], [0, 0]], constant_values=255)
        np.testing.assert_array_equal(
            pipeline._warp_xla(tf.constant(padded), tf.constant(m6), 30).numpy(), ours
        )
    sizes = [1, 2, 3, 63, 64, 65, 127, 128, 129, 1000, 1024, 1025]
    got = [int(pow2_at_least(tf.constant(n), 64)) for n in sizes]
    assert got == [64, 64, 64, 64, 64, 128, 128, 128, 256, 1024, 1024, 2048]


def test_augment_train_image_shrinks_large_images_with_antialias():
    # A 1-px black/white checkerboard 8x larger than the output averages to grey (no aliasing).
    board = ((np.indices((192, 192)).sum(0) % 2) * 255).astype(np.uint8)
    enc = tf.constant(_enc(np.repeat(board[..., None], 3, -1)))
    out = pipeline.augment_train_image(enc, False, 24, tf.constant([0, 1], tf.int64)).numpy()
    centre = out[8:16, 8:16]
    assert np.all(np.abs(centre - centre.mean()) < 0.1)


def test_one_pixel_and_huge_images_within_a_memory_bound(tmp_path):
    # A 1 x 1 image is a valid input of every path. A 10,000 x 10,000 drawing is box-averaged
    # on its uint8 pixels before anything else: in a fresh process, preprocessing it for
    # evaluation and training raises the peak RSS by less than 1 GB (its decoded pixels are
    # 300 MB; a float32 copy alone would be 1.2 GB), and its 10-px stroke survives.
    import os
    import subprocess
    import sys

    from PIL import Image

    from sketch_tf.core.png import encode_png

    one = tf.constant(encode_png(np.zeros((1, 1, 3), np.uint8)))
    for is_sketch in (True, False):
        assert pipeline.preprocess(one, is_sketch, 32, False).shape == (32, 32, 3)
        seed = tf.constant([1, 2], tf.int64)
        assert pipeline.preprocess(one, is_sketch, 32, True, seed).shape == (32, 32, 3)
    big = np.full((10000, 10000), 255, np.uint8)
    big[4995:5005] = 0  # a horizontal stroke, 10 px wide
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(big[4900:5100, 4900:5100]).save(tmp_path / "small.png")
    del big
    code = f"""
import resource, tensorflow as tf
from sketch_tf.data import pipeline
small = tf.constant(open({str(tmp_path / "small.png")!r}, "rb").read())
for sk in (True, False):  # warm-up on a small image: every op loaded, nothing large yet
    for tr in (False, True):
        pipeline.preprocess(small, sk, 224, tr, tf.constant([1, 2], tf.int64))
data = tf.constant(open({str(tmp_path / "big.png")!r}, "rb").read())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = [pipeline.preprocess(data, sk, 224, tr, tf.constant([1, 2], tf.int64))
       for sk in (True, False) for tr in (False, True)]
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(grew, float(tf.reduce_min(out[0])), [tuple(o.shape) for o in out])
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    grew, darkest, shapes = proc.stdout.strip().splitlines()[-1].split(" ", 2)
    print(f"10,000 x 10,000: peak RSS grew by {float(grew):.0f} MB after the first image")
    assert float(grew) < 1024 and float(darkest) < 0.9 and shapes.count("(224, 224, 3)") == 4


def test_stream_seed_is_the_formula_training_runs_were_seeded_with():
    # Stream i of the set with offset k of a dataset seeded `seed`: seed + k + 7919 * (i + 1).
    assert pipeline.stream_seed(0, 0, 0) == 7919
    assert pipeline.stream_seed(5, 11, 0) == 5 + 11 + 7919
    assert pipeline.stream_seed(5, 53, 2) == 5 + 53 + 7919 * 3


def test_one_pass_turns_autotuning_off_and_keeps_the_elements():
    import tensorflow as tf

    from sketch_tf.data.options import dataset_options, one_pass

    ds = tf.data.Dataset.range(5).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.with_options(dataset_options())
    # Off for every dataset (training input included): TF 2.21 stalls an autotuned iterator's
    # teardown for tens of seconds after a long pass (data/options.py).
    assert ds.options().autotune.enabled is False
    once = one_pass(ds)
    assert once.options().autotune.enabled is False
    assert once.options().deterministic is True
    assert list(once.as_numpy_iterator()) == [0, 2, 4, 6, 8]
