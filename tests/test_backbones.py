"""Tests for sketch_tf.models.backbones (layouts vs PyTorch are in test_convert_torch.py)."""

import numpy as np
import pytest

from sketch_tf.models.backbones import (
    BACKBONES,
    AdaptiveAvgPool2D,
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
