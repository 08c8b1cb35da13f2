"""SketchZooms descriptor model: K zoom views of a point -> one D-dim descriptor.

    views [B, K, S, S, 3] --merge--> [B*K, S, S, 3] --backbone (shared)--> [B*K, F]
        --head (per view)--> [B*K, D] --split--> [B, K, D] --ViewFusion--> [B, D]
        (--L2Normalize--> [B, D] when `l2_normalize`)

The backbone runs once on all B*K views (a reshape, not a Python loop over views), so every
view shares its weights. Heads follow the public PyTorch code per backbone ("auto"):

- alexnet: dropout -> fc 4096 -> ReLU -> fc D  (torchvision classifier[:3] + `dimreduction`)
- vgg11:   fc 4096 -> fc D                      (vgg classifier[0] without activation)
- resnet18: fc D                                (`fc` replaced by identity, then `dimreduction`)
- light backbones: dropout -> fc `head_hidden` (512) -> ReLU -> fc D (small_cnn with
  `backbone_kwargs={"pooling": "flatten"}` keeps the view's spatial layout like alexnet's
  flatten; a global pool throws away where in the view the strokes are)

`fusion="view_max"` is the paper's max across views; `fusion="upstream"` reproduces the public
code's stride-K max over the concatenated views (needed for converted weights).
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from sketch_tf.core.shape_buckets import pow2_at_least
from sketch_tf.data.zooms import DEFAULT_ZOOMS, zoom_views
from sketch_tf.models.backbones import build_backbone, load_weights_file
from sketch_tf.models.layers import FUSION_MODES, L2Normalize, ViewFusion, float32_output

__all__ = [
    "HEADS",
    "MergeViews",
    "SplitViews",
    "build_zooms_model",
    "count_params",
    "describe_graph",
    "describe_points",
    "describe_views",
]

#: Head kinds: "mlp" (dropout, fc hidden, ReLU, fc D), "fc_fc" (fc hidden, fc D), "linear".
HEADS = ("auto", "mlp", "fc_fc", "linear")

_AUTO_HEAD = {"alexnet": ("mlp", 4096), "vgg11": ("fc_fc", 4096), "resnet18": ("linear", None)}

# The original model is `build_zooms_model()`; the CPU default is the `model` section of
# configs/zooms.py:synthetic (small_cnn with a flatten on 32 px views), built by `ZoomsTask`.


@keras.saving.register_keras_serializable(package="sketch_tf")
class MergeViews(layers.Layer):
    """[B, K, *rest] -> [B*K, *rest] (view k of item b goes to row b*K + k)."""

    def call(self, inputs):
        return ops.reshape(inputs, (-1, *inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        b, k = input_shape[0], input_shape[1]
        return (None if b is None or k is None else b * k, *input_shape[2:])


@keras.saving.register_keras_serializable(package="sketch_tf")
class SplitViews(layers.Layer):
    """[B*K, D] -> [B, K, D] (inverse of `MergeViews`).

    Args:
      num_views: K.
    """

    def __init__(self, num_views: int, **kwargs):
        super().__init__(**kwargs)
        self.num_views = int(num_views)

    def call(self, inputs):
        return ops.reshape(inputs, (-1, self.num_views, inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        b = None if input_shape[0] is None else input_shape[0] // self.num_views
        return (b, self.num_views, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["num_views"] = self.num_views
        return config


def build_zooms_model(
    backbone: str = "alexnet",
    view_size: int = 224,
    num_views: int = 3,
    descriptor_dim: int = 128,
    fusion: str = "view_max",
    l2_normalize: bool = False,
    dropout: float = 0.5,
    head: str = "auto",
    head_hidden: int | None = None,
    backbone_kwargs: dict | None = None,
    weights_path: str | None = None,
    name: str = "sketchzooms",
) -> keras.Model:
    """Builds the SketchZooms descriptor network.

    Args:
      backbone: a key of `sketch_tf.models.backbones.BACKBONES`.
      view_size: S, side of each view in pixels (224 in the original).
      num_views: K views per point (3 in the original).
      descriptor_dim: D (128 in the original).
      fusion: "view_max" (paper) or "upstream" (public code; for converted weights).
      l2_normalize: unit-length descriptors (the original does not normalise).
      dropout: dropout rate before the hidden fc of an "mlp" head (training only).
      head: "auto" (the original's head for alexnet / vgg11 / resnet18, "mlp" otherwise),
        "mlp", "fc_fc" or "linear"; see the module docstring.
      head_hidden: width of the hidden fc (default 4096 for alexnet / vgg11, else 512).
      backbone_kwargs: extra arguments of the backbone builder (e.g. `weights_path` for
        backbone-only weights, `widths` for small_cnn).
      weights_path: optional local weights file (.weights.h5 / .npz) for the whole model.
      name: model name.

    Returns:
      keras.Model: float32 views [B, K, S, S, 3] in [0, 1] -> float32 descriptors [B, D]
      (also when built under a mixed-precision policy: `float32_output`).
    """
    if fusion not in FUSION_MODES:
        raise ValueError(f"build_zooms_model: fusion must be one of {FUSION_MODES}, got {fusion!r}")
    if head not in HEADS:
        raise ValueError(f"build_zooms_model: head must be one of {HEADS}, got {head!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"build_zooms_model: dropout must be in [0, 1), got {dropout}")
    if head == "auto":
        head, default_hidden = _AUTO_HEAD.get(backbone, ("mlp", 512))
    else:
        default_hidden = _AUTO_HEAD.get(backbone, (None, 512))[1] or 512
    hidden = int(head_hidden or default_hidden or 512)

    net = build_backbone(backbone, view_size, **(backbone_kwargs or {}))
    views = keras.Input((int(num_views), int(view_size), int(view_size), 3), name="views")
    x = MergeViews(name="merge_views")(views)
    x = net(x)
    if head == "mlp":
        x = layers.Dropout(dropout, name="head_dropout")(x)
        x = layers.Dense(hidden, activation="relu", name="head_hidden")(x)
    elif head == "fc_fc":
        x = layers.Dense(hidden, name="head_hidden")(x)
    x = layers.Dense(int(descriptor_dim), name="head_out")(x)
    x = SplitViews(num_views, name="split_views")(x)
    x = ViewFusion(fusion, name="fusion")(x)
    if l2_normalize:
        x = L2Normalize(name="l2_normalize")(x)
    model = keras.Model(views, float32_output(x), name=name)
    if weights_path:
        load_weights_file(model, weights_path)
    return model


def describe_views(model: keras.Model, views, training: bool = False) -> tf.Tensor:
    """Descriptors of points given their zoom views: [..., K, S, S, 3] -> [..., D].

    The one views -> model step of training (views made in tf.data), evaluation and serving
    (views made by `describe_graph`): leading axes are flattened into one model batch.
    """
    views = tf.convert_to_tensor(views, tf.float32)
    lead = tf.shape(views)[:-4]
    out = model(tf.reshape(views, tf.concat([[-1], tf.shape(views)[-4:]], 0)), training=training)
    return tf.reshape(out, tf.concat([lead, tf.shape(out)[-1:]], 0))


def describe_graph(model: keras.Model, images, points, zoom_kwargs: dict, chunk: int = 256):
    """Graph op: images [B, H, W, 3] in [0, 1] and points [B, N, 2] -> descriptors [B, N, D].

    Points go through `zoom_views` + `describe_views` in chunks of at most `chunk` points per
    image (a `tf.map_fn`, so memory is bounded by the chunk: each point costs K * S * S * 3
    floats of views); chunks hold a power of two of points, the last one is padded and the
    padding dropped. Used inside exported
    signatures and, traced once per model and geometry, by `describe_points`.
    """
    dim = model.output_shape[-1]
    b, n = tf.shape(points)[0], tf.shape(points)[1]
    # Chunks of a power of two of points (at most `chunk`): the zoom sampler is XLA-compiled
    # once per input shape, so bucketing bounds the compilations to log2(chunk) + 1 per image
    # size instead of one per point count a caller sends (~0.25 s each on a 2-core CPU).
    size = tf.minimum(tf.constant(int(chunk)), pow2_at_least(n, 1))
    num_chunks = (n + size - 1) // size
    padded = tf.pad(points, [[0, 0], [0, num_chunks * size - n], [0, 0]])
    chunks = tf.transpose(tf.reshape(padded, tf.stack([b, num_chunks, size, 2])), [1, 0, 2, 3])

    def one(p):  # p [B, size, 2]
        return describe_views(model, zoom_views(images, p, **zoom_kwargs), training=False)

    out = tf.map_fn(
        one,
        chunks,
        fn_output_signature=tf.TensorSpec([None, None, dim], tf.float32),
        parallel_iterations=1,  # one chunk of views in memory at a time
    )
    return tf.reshape(tf.transpose(out, [1, 0, 2, 3]), tf.stack([b, -1, dim]))[:, :n]


#: model -> {(zoom kwargs, chunk) key: traced `describe_graph`}; one trace per model and
#: geometry instead of one per call (evaluation calls describe_points once per drawing).
_DESCRIBE_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _describe_fn(model: keras.Model, kw: dict, chunk: int):
    key = (tuple(sorted((name, repr(value)) for name, value in kw.items())), int(chunk))
    per_model = _DESCRIBE_FNS.setdefault(model, {})
    if key not in per_model:

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, None, 2])]
        )
        def run(im, pts):
            return describe_graph(model, im, pts, kw, chunk)

        per_model[key] = run
    return per_model[key]


def describe_points(
    model: keras.Model,
    images,
    points,
    zoom_kwargs: dict | None = None,
    batch_points: int = 256,
) -> np.ndarray:
    """Descriptors for given points of one or more sketches, in batches of points.

    Args:
      model: a `build_zooms_model` model (its input fixes K and S).
      images: [H, W, 3] or [B, H, W, 3]; float in [0, 1] or uint8 (divided by 255).
      points: [N, 2] or [B, N, 2] (x, y) pixels (convention of `sketch_tf.data.zooms`).
      zoom_kwargs: extra `zoom_views` arguments (zooms, base_half_size, reference_size, ...);
        `view_size` defaults to the model's S. Leave the augmentations off for inference.
      batch_points: points per image per model call (bounds memory: each point costs
        K * S * S * 3 floats of views).

    Returns:
      float32 numpy [N, D] (or [B, N, D] for batched input).
    """
    _, k, s, _, _ = model.input_shape
    kw = {"view_size": s, "zooms": DEFAULT_ZOOMS, **(zoom_kwargs or {})}
    if kw["view_size"] != s or len(kw["zooms"]) != k:
        raise ValueError(
            f"describe_points: model expects {k} views of {s}px, zoom_kwargs give "
            f"{len(kw['zooms'])} views of {kw['view_size']}px"
        )
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    points = np.asarray(points, np.float32)
    single = images.ndim == 3
    if single:
        images, points = images[None], points[None]
    if images.ndim != 4 or points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(
            f"describe_points: need images [B,H,W,3] / [H,W,3] and points [B,N,2] / [N,2], "
            f"got {images.shape} and {points.shape}"
        )
    if images.shape[0] != points.shape[0]:
        raise ValueError(
            f"describe_points: {images.shape[0]} images but points for {points.shape[0]}"
        )
    if batch_points < 1:
        raise ValueError(f"describe_points: batch_points must be >= 1, got {batch_points}")
    if points.shape[1] == 0:
        out = np.zeros((images.shape[0], 0, model.output_shape[-1]), np.float32)
    else:
        run = _describe_fn(model, kw, batch_points)
        out = run(tf.constant(images, tf.float32), tf.constant(points)).numpy()
    return out[0] if single else out


def count_params(model: keras.Model) -> int:
    """Number of scalar weights of `model` (trainable and not)."""
    return int(sum(np.prod(v.shape) for v in model.weights))
