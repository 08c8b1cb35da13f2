"""Tests of sketch_tf.eval.correspondence: matchers, PCK, CMC, sampling and baselines."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sketch_tf.eval import correspondence as C


@pytest.fixture(scope="module")
def planted():
    """B is a permutation of A plus small noise: every matcher must recover the permutation."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 8))
    perm = rng.permutation(40)
    b = np.empty_like(a)
    b[perm] = a + 0.01 * rng.normal(size=a.shape)  # a[i] lives at b[perm[i]]
    return a, b, perm


@pytest.mark.parametrize("name", sorted(C.MATCHERS))
def test_matchers_recover_planted_permutation(planted, name):
    a, b, perm = planted
    pairs = C.MATCHERS[name](a, b)
    assert pairs.dtype == np.int64 and pairs.shape == (40, 2)
    np.testing.assert_array_equal(pairs[:, 0], np.arange(40))
    np.testing.assert_array_equal(pairs[:, 1], perm)


def test_hungarian_beats_greedy_nearest_on_conflict():
    # a0 and a1 both prefer b0 (distances 0.6 and 0.4). One-to-one costs: a0-b0 + a1-b1 =
    # 0.6 + 2.5 = 3.1 against a0-b1 + a1-b0 = 1.5 + 0.4 = 1.9, so Hungarian crosses them.
    a = np.array([[0.0], [1.0]])
    b = np.array([[0.6], [-1.5]])
    np.testing.assert_array_equal(C.match_nearest(a, b), [[0, 0], [1, 0]])
    np.testing.assert_array_equal(C.match_mutual_nn(a, b), [[1, 0]])  # b0's nearest is a1
    np.testing.assert_array_equal(C.match_hungarian(a, b), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(C.match_hungarian(a, b, max_distance=1.0), [[1, 0]])


def test_sinkhorn_plan_has_requested_marginals():
    rng = np.random.default_rng(1)
    log_p = C.sinkhorn_log(rng.normal(size=(5, 7)), iterations=200)
    p = np.exp(log_p)
    np.testing.assert_allclose(p.sum(axis=0), 1 / 7, atol=1e-9)
    np.testing.assert_allclose(p.sum(axis=1), 1 / 5, atol=1e-6)


def test_pck_hand_example():
    true = np.array([[0.0, 0.0], [10.0, 10.0], [50.0, 50.0], [0.0, 0.0]])
    pred = np.array([[3.0, 4.0], [10.0, 20.0], [50.0, 50.0], [np.nan, np.nan]])
    # Errors 5, 10, 0, unmatched; side 200 -> thresholds 5 px, 10 px, 20 px.
    np.testing.assert_allclose(C.pck_curve(pred, true, 200), [2 / 4, 3 / 4, 3 / 4])
    np.testing.assert_allclose(C.pck_curve(pred, true, (100, 200), [0.01]), [1 / 4])
    with pytest.raises(ValueError, match="shapes differ"):
        C.pck_curve(pred[:2], true, 200)


def test_predicted_points_marks_unmatched():
    out = C.predicted_points([[0, 1]], np.array([[1.0, 2.0], [3.0, 4.0]]), 2)
    np.testing.assert_array_equal(out[0], [3.0, 4.0])
    assert np.isnan(out[1]).all()


def test_cmc_hand_example():
    a = np.array([[0.0], [10.0]])
    b = np.array([[1.0], [0.5], [9.0]])
    # Point 0: true match b0 at distance 1, b1 closer (0.5) -> rank 2. Point 1: b2 closest -> 1.
    ranks, curve = C.cmc(a, b, [0, 2])
    np.testing.assert_array_equal(ranks, [2, 1])
    np.testing.assert_allclose(curve, [0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="match_index"):
        C.cmc(a, b, [0, 3])


def test_grid_points():
    mask = np.zeros((10, 10), bool)
    mask[:5, :] = True
    pts = C.grid_points(mask, 4)
    # Nodes at 2, 6 (rows 2 only inside rows < 5) and columns 2, 6.
    np.testing.assert_array_equal(pts, [[2, 2], [6, 2]])


def test_poisson_disk_min_distance_and_coverage():
    mask = np.zeros((64, 64), bool)
    mask[10:50, 5:60] = True
    pts = C.poisson_disk_points(mask, 5.0, seed=3)
    assert mask[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
    assert d.min() >= 5.0
    # Maximal: every mask pixel is within r of a sample.
    rows, cols = np.nonzero(mask)
    pix = np.stack([cols, rows], 1)
    nearest = np.min(np.linalg.norm(pix[:, None] - pts[None], axis=-1), axis=1)
    assert nearest.max() < 5.0
    np.testing.assert_array_equal(pts, C.poisson_disk_points(mask, 5.0, seed=3))


def _drawing(offset=(0, 0), size=128):
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    ox, oy = offset
    draw.ellipse([20 + ox, 20 + oy, 70 + ox, 60 + oy], outline=0, width=2)
    draw.line([30 + ox, 80 + oy, 90 + ox, 95 + oy], fill=0, width=2)
    return np.asarray(img)


def test_shape_context_translation_invariant_and_normalised():
    pts = np.array([[45.0, 20.0], [60.0, 88.0], [20.0, 40.0]])
    shift = np.array([17, 9])
    d0 = C.shape_context_descriptors(_drawing(), pts, max_ink_points=300)
    d1 = C.shape_context_descriptors(_drawing(tuple(shift)), pts + shift, max_ink_points=300)
    assert d0.shape == (3, 72)
    np.testing.assert_allclose(d0, d1, atol=1e-6)
    np.testing.assert_allclose(d0.sum(axis=1), 1.0, atol=1e-6)
    # Different points give different histograms.
    assert np.abs(d0[0] - d0[1]).sum() > 0.1


def test_raw_patch_descriptors_hand_example():
    img = np.full((16, 16), 255, np.uint8)
    img[4:8, 4:8] = 0  # black 4x4 square
    desc = C.raw_patch_descriptors(img, [[6.0, 6.0], [-20.0, -20.0]], patch_size=8, out_size=2)
    # The 8x8 window around (6, 6) spans pixels 2..9; the square sits at window cells 2..5, i.e.
    # a quarter (2x2 pixels) of each 4x4 quadrant -> ink 0.25 in all four, then L2-normalised.
    window = np.zeros((8, 8))
    window[2:6, 2:6] = 1.0
    quad = window.reshape(2, 4, 2, 4).mean(axis=(1, 3)).reshape(-1)
    np.testing.assert_allclose(desc[0], quad / np.linalg.norm(quad), atol=1e-6)
    np.testing.assert_array_equal(desc[1], np.zeros(4))  # entirely outside: white fill
    # Translation: same content shifted gives the same descriptor.
    img2 = np.full((16, 16), 255, np.uint8)
    img2[7:11, 5:9] = 0
    desc2 = C.raw_patch_descriptors(img2, [[7.0, 9.0]], patch_size=8, out_size=2)
    np.testing.assert_allclose(desc2[0], desc[0], atol=1e-6)
