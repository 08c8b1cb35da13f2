"""Non-learned retrieval baselines (sketch_tf.eval.baselines): raw pixels, edge maps, HOG."""

import numpy as np
import pytest

from sketch_tf.eval import baselines

S = 32


def _outline(shape: str, shift: int = 0, size: int = S) -> np.ndarray:
    """A black outline (2 px) on white, [size, size, 3]: "square" or "cross"."""
    img = np.ones((size, size), np.float32)
    lo, hi = 8 + shift, 24 + shift
    if shape == "square":
        img[lo:hi, lo : lo + 2] = img[lo:hi, hi - 2 : hi] = 0.0
        img[lo : lo + 2, lo:hi] = img[hi - 2 : hi, lo:hi] = 0.0
    else:  # two diagonals
        r = np.arange(lo, hi)
        for dr in (0, 1):
            img[r, np.clip(r + dr, 0, size - 1)] = 0.0
            img[r, np.clip(lo + hi - 1 - r + dr, 0, size - 1)] = 0.0
    return np.repeat(img[..., None], 3, axis=-1)


def _disc_photo(size: int = 48, radius: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """A filled dark-red disc on a smooth horizontal gradient; returns (image, distance of each
    pixel to the disc's boundary)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    img = np.stack([0.3 + 0.4 * xx / size] * 3, axis=-1)  # grey ramp 0.3 -> 0.7
    img[dist <= radius] = (0.8, 0.1, 0.1)
    return img.astype(np.float32), np.abs(dist - radius)


def test_raw_pixels_shape_normalisation_and_determinism():
    rng = np.random.default_rng(0)
    x = rng.random((3, 40, 40, 3)).astype(np.float32)
    x[2] = 0.5  # constant image
    d = baselines.raw_pixels(x, size=16)
    assert d.shape == (3, 256) and d.dtype == np.float32
    np.testing.assert_allclose(d[:2].mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(d[:2], axis=1), 1.0, rtol=1e-5)
    assert not d[2].any()  # nothing to normalise: all zeros, no NaN
    np.testing.assert_array_equal(d, baselines.raw_pixels(x, size=16))
    # Area downsampling: 4x4 blocks of a 32x32 image average exactly.
    blocks = rng.random((1, 8, 8)).astype(np.float32)
    big = np.kron(blocks, np.ones((4, 4), np.float32))
    want = (blocks.reshape(1, -1) - blocks.mean()) / np.linalg.norm(blocks - blocks.mean())
    np.testing.assert_allclose(baselines.raw_pixels(big, size=8), want, atol=1e-5)
    # Brightness and contrast changes leave the descriptor unchanged.
    np.testing.assert_allclose(baselines.raw_pixels(0.2 + 0.5 * x[:2]), d[:2], atol=1e-5)


def test_resize_area_down_and_bilinear_up():
    m = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    down = baselines.resize(m, 2)
    np.testing.assert_allclose(down[0], [[2.5, 4.5], [10.5, 12.5]])
    up = baselines.resize(m, 8)
    assert up.shape == (1, 8, 8)
    np.testing.assert_allclose(up.mean(), m.mean(), atol=1e-5)  # symmetric interpolation
    assert up.min() >= m.min() and up.max() <= m.max()


def test_edge_map_peaks_on_the_disc_boundary():
    img, to_boundary = _disc_photo()
    e = baselines.edge_map(img[None])
    assert e.shape == (1, 48, 48) and e.dtype == np.float32
    assert e.max() == pytest.approx(1.0) and e.min() >= 0.0
    e = e[0]
    near, far = to_boundary <= 2.0, to_boundary >= 5.0
    # Every strong response lies on the boundary; the background ramp stays faint.
    assert np.all(to_boundary[e > 0.5] <= 2.0)
    assert e[near].mean() > 5 * e[far].mean()
    assert e[far].max() < 0.3
    # Thinning keeps a one-pixel ridge; the threshold zeroes the ramp.
    thin = baselines.edge_map(img[None], thin=True, threshold=0.2)[0]
    assert 0 < np.count_nonzero(thin) < np.count_nonzero(e > 0.2)
    assert np.all(to_boundary[thin > 0] <= 2.0)
    # A flat image has no edges (and no NaN); the sketch line map is its ink.
    assert not baselines.edge_map(np.full((1, 8, 8, 3), 0.4, np.float32)).any()
    sketch = _outline("square")[None]
    np.testing.assert_allclose(baselines.line_map(sketch, True), 1.0 - sketch[..., 0])
    np.testing.assert_array_equal(baselines.line_map(img[None], False)[0], e)


def test_hog_shape_determinism_and_shift_tolerance():
    batch = np.stack([_outline("square"), _outline("square", shift=1), _outline("cross")])
    h = baselines.hog(batch, is_sketch=True)
    # 64 px, 8 px cells -> 8x8 cells, 7x7 blocks of 2x2 cells x 9 orientations.
    assert h.shape == (3, 7 * 7 * 4 * 9) and h.dtype == np.float32
    assert np.all(np.isfinite(h)) and h.min() >= 0.0
    np.testing.assert_array_equal(h, baselines.hog(batch, is_sketch=True))
    shifted = np.linalg.norm(h[0] - h[1])
    other = np.linalg.norm(h[0] - h[2])
    assert shifted < 0.75 * other  # 4.7 vs 8.1
    small = baselines.hog(batch, True, size=32, pixels_per_cell=16)  # 2x2 cells: one block
    assert small.shape == (3, 36)
    with pytest.raises(ValueError, match="block must fit"):
        baselines.hog(batch, True, size=16, pixels_per_cell=16)


def test_hog_matches_a_photo_with_its_outline_sketch():
    # The edge map of a filled square photo looks like the square's outline sketch.
    photo = np.full((2, S, S, 3), 0.6, np.float32)
    photo[0, 8:24, 8:24] = 0.1  # square
    r = np.arange(S)
    photo[1][np.abs(r[:, None] - r[None, :]) <= 1] = 0.1  # diagonal bar
    sketches = np.stack([_outline("square"), _outline("cross")])
    hp = baselines.hog(photo, is_sketch=False)
    hs = baselines.hog(sketches, is_sketch=True)
    d = np.linalg.norm(hs[:, None] - hp[None], axis=-1)
    assert d[0, 0] < d[0, 1]


def test_baseline_descriptors_dispatch_and_errors():
    x = np.stack([_outline("square"), _outline("cross")])
    for name in baselines.BASELINE_NAMES:
        assert name in baselines.BASELINE_LABELS
        d = baselines.baseline_descriptors(name, x, is_sketch=True)
        assert d.ndim == 2 and d.shape[0] == 2 and d.dtype == np.float32
    np.testing.assert_array_equal(
        baselines.baseline_descriptors("raw_pixels", x, False), baselines.raw_pixels(x)
    )
    np.testing.assert_array_equal(
        baselines.baseline_descriptors("hog", x, False), baselines.hog(x, False)
    )
    with pytest.raises(ValueError, match="baseline"):
        baselines.baseline_descriptors("sift", x, True)
    with pytest.raises(ValueError, match="images"):
        baselines.raw_pixels(np.zeros((2, 8, 8, 4)))
    with pytest.raises(ValueError, match="NaN"):
        baselines.raw_pixels(np.full((1, 8, 8, 3), np.nan))
    # uint8 input is read as 0..255.
    np.testing.assert_allclose(
        baselines.raw_pixels((x * 255).astype(np.uint8)), baselines.raw_pixels(x), atol=1e-5
    )


def test_edge_maps_and_style_statistics_do_not_mix_images_of_a_batch():
    rng = np.random.default_rng(0)
    batch = rng.random((3, S, S, 3)).astype(np.float32)
    one_by_one = np.concatenate([baselines.edge_map(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(baselines.edge_map(batch), one_by_one, rtol=1e-6)
    stats = baselines.colour_texture(batch)
    singles = np.concatenate([baselines.colour_texture(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(stats, singles, rtol=1e-6)


def test_colour_texture_blocks_and_what_it_separates():
    red = np.zeros((1, S, S, 3), np.float32)
    red[..., 0] = 0.9
    d = baselines.colour_texture(red)
    assert d.shape == (1, 4**3 + 3 * 8)
    # A flat red image: one colour bin (3, 0, 0) holds everything, zero gradient, zero contrast,
    # and no orientation at all (an empty block stays 0): norm sqrt(3) / 2.
    np.testing.assert_allclose(np.linalg.norm(d), np.sqrt(3) / 2, rtol=1e-6)
    assert d[0, (3 * 4 + 0) * 4 + 0] == pytest.approx(0.5)
    assert not d[0, 72:80].any()
    assert d[0, 64] == pytest.approx(0.5) and d[0, 64 + 16] == pytest.approx(0.5)
    # Same colours, different texture: stripes differ from the flat image in the texture blocks.
    stripes = red.copy()
    stripes[:, :, ::2, 0] = 0.8
    e = baselines.colour_texture(stripes)
    assert np.allclose(e[0, :64], d[0, :64]) and not np.allclose(e[0, 64:], d[0, 64:])
    assert baselines.baseline_descriptors("colour_texture", red, False).shape == d.shape


def test_baseline_names_problems_name_the_key_and_the_fault():
    assert baselines.baseline_names_problems(("hog", "raw_pixels")) == []
    assert baselines.baseline_names_problems(()) == []
    assert baselines.baseline_names_problems(None) == []
    (dup,) = baselines.baseline_names_problems(("hog", "hog"), key="eval.x")
    assert dup.startswith("eval.x must be distinct names of") and "('hog', 'hog')" in dup
    (unknown,) = baselines.baseline_names_problems(("sift",))
    assert "eval.baselines must be distinct names of" in unknown
    (typed,) = baselines.baseline_names_problems("hog")
    assert "eval.baselines must be a tuple of names" in typed
