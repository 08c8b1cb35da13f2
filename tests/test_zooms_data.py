"""Tests for sketch_tf.data.zooms: geometry against NumPy / PIL references, randomness, tf.data."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.data.zooms import area_shrink, minmax_stretch, sample_views, zoom_views


@pytest.fixture(scope="module")
def noise_image():
    rng = np.random.default_rng(0)
    return rng.random((1, 64, 80, 3), dtype=np.float32)


def _padded_crop(image, x, y, h):
    """NumPy reference: the 2h x 2h integer crop [y-h, y+h) x [x-h, x+h), white outside."""
    big = np.ones((image.shape[0] + 4 * h, image.shape[1] + 4 * h, 3), np.float32)
    big[2 * h : 2 * h + image.shape[0], 2 * h : 2 * h + image.shape[1]] = image
    return big[y + h : y + 3 * h, x + h : x + 3 * h]


@pytest.mark.parametrize("method", ["gather", "crop_and_resize"])
def test_unit_scale_views_equal_plain_crops(noise_image, method):
    # With 2h == S every output pixel centre lands on an input pixel centre: a pure crop.
    h, s = 8, 16
    pts = [(40, 30), (3, 5), (80, 64)]  # the last two reach outside -> white fill
    views = sample_views(
        noise_image,
        np.array([pts], np.float32),
        np.full((1, 3, 1), h, np.float32),
        flip=np.array([[False, True, False]]),
        view_size=s,
        method=method,
    ).numpy()
    assert views.shape == (1, 3, 1, s, s, 3)
    for i, (x, y) in enumerate(pts):
        ref = _padded_crop(noise_image[0], x, y, h)
        if i == 1:
            ref = ref[:, ::-1]
        np.testing.assert_allclose(views[0, i, 0], ref, atol=1e-5)
    # A corner point sees white in three quadrants.
    assert np.all(views[0, 2, 0, h:, :] == 1.0) and np.all(views[0, 2, 0, :, h:] == 1.0)


def test_rotation_90_is_numpy_rot90(noise_image):
    h, s = 8, 16
    pts = np.array([[(40, 30), (20, 25)]], np.float32)
    views = sample_views(
        noise_image,
        pts,
        np.full((1, 2, 1), h, np.float32),
        angles=np.full((1, 2), math.pi / 2, np.float32),
        flip=np.array([[False, True]]),
        view_size=s,
    ).numpy()
    # np.rot90 turns counter-clockwise as displayed, like PIL Image.rotate(90).
    ref0 = np.rot90(_padded_crop(noise_image[0], 40, 30, h))
    ref1 = np.rot90(_padded_crop(noise_image[0], 20, 25, h)[:, ::-1])  # flip, then rotate
    np.testing.assert_allclose(views[0, 0, 0], ref0, atol=1e-5)
    np.testing.assert_allclose(views[0, 1, 0], ref1, atol=1e-5)


def _pil_view(image, x, y, h, angle_deg, flip, s):
    """PIL reference: affine bilinear transform (no anti-aliasing) of each float channel."""
    a = math.radians(angle_deg)
    c, sn, f, k = math.cos(a), math.sin(a), (-1.0 if flip else 1.0), 2.0 * h / s
    # Output continuous (X, Y) -> view offset q = k (X - s/2, Y - s/2) -> image p = F R(-a) q.
    coeffs = (
        f * c * k,
        -f * sn * k,
        x - f * (c - sn) * k * s / 2,
        sn * k,
        c * k,
        y - (sn + c) * k * s / 2,
    )
    chans = []
    for ch in range(3):
        im = Image.fromarray(np.ascontiguousarray(image[..., ch]), mode="F")
        out = im.transform((s, s), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=1.0)
        chans.append(np.asarray(out))
    return np.stack(chans, -1)


def test_against_pil_affine_reference(noise_image):
    s = 12
    cases = [
        (40.3, 31.7, 13.4, 30.0, False),
        (35.0, 28.2, 9.0, -41.0, True),
        (44.0, 33.0, 20.0, 0.0, True),
    ]
    pts = np.array([[(c[0], c[1]) for c in cases]], np.float32)
    half = np.array([[[c[2]] for c in cases]], np.float32)
    angles = np.array([[math.radians(c[3]) for c in cases]], np.float32)
    flips = np.array([[c[4] for c in cases]])
    views = sample_views(noise_image, pts, half, angles=angles, flip=flips, view_size=s).numpy()
    for i, (x, y, h, a, f) in enumerate(cases):
        ref = _pil_view(noise_image[0], x, y, h, a, f, s)
        np.testing.assert_allclose(views[0, i, 0], ref, atol=1e-4)


def test_gather_and_crop_and_resize_agree(noise_image):
    rng = np.random.default_rng(1)
    pts = rng.uniform(-5, 85, size=(1, 6, 2)).astype(np.float32)
    half = rng.uniform(3, 30, size=(1, 6, 2)).astype(np.float32)
    flips = rng.random((1, 6)) < 0.5
    a = sample_views(noise_image, pts, half, flip=flips, view_size=10, method="gather")
    b = sample_views(noise_image, pts, half, flip=flips, view_size=10, method="crop_and_resize")
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_minmax_stretch_hand_values():
    v = np.ones((1, 2, 2, 3), np.float32)
    v[0, :, :, 0] = [[0.2, 0.6], [0.4, 0.6]]  # stretched to [0, 1, .5, 1]
    v[0, :, :, 1] = 0.3  # constant: left as is
    out = minmax_stretch(tf.constant(v)).numpy()
    np.testing.assert_allclose(out[0, :, :, 0], [[0.0, 1.0], [0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 1], 0.3, atol=1e-7)
    np.testing.assert_allclose(out[0, :, :, 2], 1.0)
    assert np.all(np.isfinite(out))


def _ramp_image(h=256, w=256):
    """Channel 0 = x / w, channel 1 = y / h, channel 2 = 0.5: views reveal their geometry."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([(xx + 0.5) / w, (yy + 0.5) / h, np.full_like(xx, 0.5)], -1)[None]


def _geometry(views, w):
    """Recovers half-size, angle (rad) and flip sign from unstretched views of the ramp."""
    s = views.shape[-2]
    ch0 = views[..., 0]
    d_dx = (ch0[..., :, -1] - ch0[..., :, 0]).mean(-1) / (s - 1)  # per view-pixel step in x
    d_dy = (ch0[..., -1, :] - ch0[..., 0, :]).mean(-1) / (s - 1)
    step = np.hypot(d_dx, d_dy) * w  # image px per view px = 2h / s
    # image x offset = sign * (cos(a) qx - sin(a) qy)
    cos_sign = d_dx * w / step
    sin_sign = -d_dy * w / step
    sign = np.where(cos_sign < 0, -1.0, 1.0)  # |a| <= 45 deg so cos(a) > 0
    return step * s / 2, np.arctan2(sign * sin_sign, sign * cos_sign), sign


def test_zoom_sizes_follow_formula_and_image_height():
    img = _ramp_image(256, 256)
    pts = np.array([[(128.0, 128.0), (100.0, 140.0)]], np.float32)
    views = zoom_views(img, pts, zooms=(0.9, 0.5), view_size=16, stretch=False).numpy()
    assert views.shape == (1, 2, 2, 16, 16, 3)
    half, _, sign = _geometry(views, 256)
    # 100 * z * 256 / 512 px
    np.testing.assert_allclose(half[0], [[45.0, 25.0], [45.0, 25.0]], rtol=1e-3)
    assert np.all(sign == 1)
    # Centre of the view (between the 4 middle pixels) is the point.
    centre = views[0, :, :, 7:9, 7:9, :2].mean((2, 3))
    np.testing.assert_allclose(centre * 256, np.repeat(pts[0][:, None], 2, 1), atol=1e-3)


def test_per_point_jitter_rotation_flip_shared_by_views_and_seeded():
    img = _ramp_image(256, 256)
    pts = np.tile(np.array([[(128.0, 128.0)]], np.float32), (1, 40, 1))
    kw = dict(
        zooms=(0.5, 0.4, 0.3),
        view_size=8,
        scale_jitter=0.1,
        max_rotation_deg=45.0,
        flip_prob=0.5,
        stretch=False,
    )
    v1 = zoom_views(img, pts, seed=(3, 4), **kw).numpy()
    v2 = zoom_views(img, pts, seed=tf.constant([3, 4]), **kw).numpy()
    v3 = zoom_views(img, pts, seed=(5, 4), **kw).numpy()
    np.testing.assert_array_equal(v1, v2)
    assert not np.allclose(v1, v3)
    half, angle, sign = _geometry(v1, 256)
    u = np.array([0.5, 0.4, 0.3]) - half[0] / 50.0  # [N, K]
    np.testing.assert_allclose(u, u[:, :1].repeat(3, 1), atol=2e-3)  # one u per point
    assert np.all(np.abs(u) <= 0.1 + 2e-3) and u.std() > 0.02
    np.testing.assert_allclose(angle[0], angle[0, :, :1].repeat(3, 1), atol=2e-3)
    assert np.all(np.abs(angle) <= math.radians(45) + 2e-3) and angle.std() > 0.2
    assert np.all(sign[0] == sign[0, :, :1])
    assert 5 <= (sign[0, :, 0] < 0).sum() <= 35


def test_inside_tf_data_matches_eager(noise_image):
    pts = np.array([[(40.0, 30.0), (10.0, 50.0)]], np.float32)
    kw = dict(view_size=8, zooms=(0.2, 0.1), scale_jitter=0.05, max_rotation_deg=30, flip_prob=0.5)

    def fn(i, elem):
        img, p = elem
        return zoom_views(img, p, seed=tf.stack([i, tf.constant(7, tf.int64)]), **kw)

    ds = tf.data.Dataset.from_tensor_slices((noise_image[None], pts[None]))
    ds = ds.enumerate().map(fn)
    got = next(iter(ds)).numpy()
    want = zoom_views(noise_image, pts, seed=(0, 7), **kw).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_area_shrink_block_means_and_white_padding():
    img = np.random.default_rng(1).random((2, 7, 9, 3), dtype=np.float32)
    got = area_shrink(img, 3).numpy()
    big = np.ones((2, 9, 9, 3), np.float32)  # padded with white to a multiple of 3
    big[:, :7] = img
    want = big.reshape(2, 3, 3, 3, 3, 3).mean(axis=(2, 4))
    assert got.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(area_shrink(img, 1).numpy(), img)


def test_antialias_views_are_area_averages(noise_image):
    img = noise_image[:, :, :64]
    centre = np.full((1, 1, 2), 32.0, np.float32)
    kw = dict(zooms=(1.0,), base_half_size=32, reference_size=64, view_size=16, stretch=False)
    # 64 px window -> 16 px view: factor 4, each view pixel is the mean of a 4x4 block.
    got = zoom_views(img, centre, antialias=True, **kw).numpy()[0, 0, 0]
    want = img[0].reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(got, want, atol=1e-6)
    plain = zoom_views(img, centre, **kw).numpy()[0, 0, 0]
    assert np.abs(plain - want).max() > 0.1  # point sampling of noise is far from the mean
    # The rotation path (gather) shrinks the same way.
    rot = zoom_views(img, centre, antialias=True, method="gather", **kw).numpy()[0, 0, 0]
    np.testing.assert_allclose(rot, want, atol=1e-5)
    # Factor 1 (window no larger than two view sizes) changes nothing.
    pts = np.array([[(40.0, 30.0), (3.0, 60.0)]], np.float32)
    kw1 = dict(kw, base_half_size=12)
    np.testing.assert_array_equal(
        zoom_views(img, pts, antialias=True, **kw1).numpy(), zoom_views(img, pts, **kw1).numpy()
    )


def test_antialias_keeps_thin_strokes_visible():
    # A 1 px vertical line seen through a 360 px window at 32 px: point sampling misses it for
    # most sub-pixel offsets, area averaging always shows it.
    img = np.ones((1, 512, 512, 3), np.float32)
    img[0, :, 250] = 0.0
    xs = np.linspace(240.0, 260.0, 21, dtype=np.float32)
    pts = np.stack([xs, np.full_like(xs, 256.0)], -1)[None]
    kw = dict(zooms=(1.8,), view_size=32, stretch=False)
    plain = zoom_views(img, pts, **kw).numpy().min(axis=(2, 3, 4, 5))[0]
    smooth = zoom_views(img, pts, antialias=True, **kw).numpy().min(axis=(2, 3, 4, 5))[0]
    assert np.all(smooth < 0.97)  # the stroke darkens some pixel of every view
    assert np.mean(plain > 0.99) > 0.5  # ...which point sampling misses for most offsets


def test_default_224_shape():
    img = np.ones((1, 512, 512, 3), np.float32)
    views = zoom_views(img, np.array([[(256.0, 256.0), (10.0, 500.0)]], np.float32))
    assert views.shape == (1, 2, 3, 224, 224, 3)
    np.testing.assert_array_equal(views.numpy(), 1.0)  # blank page: constant, no NaN


def test_bad_inputs_raise():
    img = np.ones((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="images"):
        zoom_views(np.ones((32, 32, 3), np.float32), np.zeros((1, 1, 2), np.float32))
    with pytest.raises(ValueError, match="points"):
        zoom_views(img, np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="scale_jitter"):
        zoom_views(img, np.zeros((1, 1, 2), np.float32), zooms=(0.2,), scale_jitter=0.3)
    with pytest.raises(ValueError, match="rotate"):
        zoom_views(img, np.zeros((1, 1, 2)), max_rotation_deg=10, method="crop_and_resize")
