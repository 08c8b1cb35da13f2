"""tf.data input layer: decode, resize and augment images; record streams and batching.

Every image op works on one image (eagerly or inside `Dataset.map`) and every random op is
*stateless*: it takes a `seed` int64 [2] tensor, so a dataset built with a given `seed` yields
the same batches every time (per-element seeds are `[seed, element index]`).

Datasets never materialise records: each (domain, class) gets its own stream over the shards
that hold it (the writer's `group_by="domain_class"` makes these exact; otherwise all shards
are read and filtered), streams are mixed with `tf.data.Dataset.choose_from_datasets` driven
by a seeded choice stream, and decoding / augmentation run with AUTOTUNE parallelism and
prefetch. Output batches have the GLOBAL batch size (the training loop splits them with
`strategy.experimental_distribute_dataset`) and static shapes.

This module is the generic part: image ops, labelled-image readers and the per-class streams,
seeds and options that the families' own samplers (`sketch_tf.families.<family>.data`) build
their batches from.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from sketch_tf.core import kernels
from sketch_tf.core.shape_buckets import pow2_at_least
from sketch_tf.data import cache, schema, tfrecord
from sketch_tf.data.options import dataset_options

AUTOTUNE = tf.data.AUTOTUNE
#: What a triplet batch builder yields per image: the preprocessed image, or its int64 cache
#: key (`cache.image_keys`) for training on cached trunk features.
TRIPLET_OUTPUTS = ("images", "keys")
#: `stream_seed`'s stride between the streams of one dataset (a prime).
STREAM_SEED_STRIDE = 7919

#: Train-time affine ranges: rotation +-degrees, scale 1 +- scale, shift +- fraction of side.
AFFINE_MAX_DEGREES, AFFINE_MAX_SCALE, AFFINE_MAX_SHIFT = 10.0, 0.1, 0.05


# ---- single-image ops --------------------------------------------------------------------------
#: `preprocess` area-reduces a decoded image whose long side exceeds this many times the
#: output side before anything else (`decode_image(max_side=...)`).
MAX_SIDE_FACTOR = 4


def decode_image(
    encoded: tf.Tensor, dtype: tf.DType = tf.float32, max_side: int | None = None
) -> tf.Tensor:
    """Encoded PNG/JPEG/GIF/BMP (any of 1-4 channels) -> [H, W, 3]: float32 in [0, 1], or
    uint8 with `dtype=tf.uint8` (what the training augmentation warps).

    Grey is repeated to 3 channels; an alpha channel is composited onto white (transparent
    sketch backgrounds become paper, not black). The one image decoder of the project.

    `max_side`: an image whose long side is larger is first box-averaged (`ResizeArea`, on
    the decoded uint8 pixels) to that long side, aspect kept. That bounds the memory of huge
    inputs: a 10,000 x 10,000 photo costs its 300 MB of uint8 pixels instead of a 1.2 GB
    float32 copy and the resize's buffers. Callers that map points through the image
    (`resize_pad_geometry`) leave it None.
    """
    raw = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    if max_side is not None:
        raw = _area_fit(raw, int(max_side))
    if dtype == tf.uint8:
        # 8-bit RGB needs no float round trip; anything else goes through the float path.
        out = tf.cond(
            tf.equal(tf.shape(raw)[-1], 3),
            lambda: raw[..., :3],
            lambda: tf.image.convert_image_dtype(_to_rgb(raw), tf.uint8, saturate=True),
        )
        out.set_shape([None, None, 3])
        return out
    return _to_rgb(raw)


def _area_fit(raw: tf.Tensor, max_side: int) -> tf.Tensor:
    """uint8 [H, W, C] -> the same, box-averaged to a long side of `max_side` when longer."""
    hw = tf.shape(raw)[:2]
    longest = tf.reduce_max(hw)

    def shrink():
        ratio = float(max_side) / tf.cast(longest, tf.float32)
        new = tf.maximum(tf.cast(tf.round(tf.cast(hw, tf.float32) * ratio), tf.int32), 1)
        small = tf.raw_ops.ResizeArea(images=raw[None], size=new)[0]  # float32, 0..255
        return tf.cast(tf.clip_by_value(tf.round(small), 0.0, 255.0), tf.uint8)

    out = tf.cond(longest > max_side, shrink, lambda: raw)
    out.set_shape([None, None, raw.shape[-1]])
    return out


def _to_rgb(raw: tf.Tensor) -> tf.Tensor:
    """Decoded uint8 [H, W, C] (C in 1-4) -> float32 [H, W, 3] in [0, 1]."""
    img = tf.image.convert_image_dtype(raw, tf.float32)
    c = tf.shape(img)[-1]

    def grey():
        return tf.tile(img[..., :1], [1, 1, 3])

    def grey_alpha():
        a = img[..., 1:2]
        return tf.tile(img[..., :1] * a + (1.0 - a), [1, 1, 3])

    def rgb():
        return img[..., :3]

    def rgba():
        a = img[..., 3:4]
        return img[..., :3] * a + (1.0 - a)

    out = tf.switch_case(tf.clip_by_value(c - 1, 0, 3), [grey, grey_alpha, rgb, rgba])
    out.set_shape([None, None, 3])
    return out


def resize_pad_geometry(image: tf.Tensor, size: int, pad_value: float = 1.0):
    """`resize_keep_aspect` that also returns the mapping of pixel coordinates.

    Returns:
      (image [size, size, C], scale [2] float32 (sx, sy), offset [2] float32 (ox, oy)) such that
      a point (x, y) of the input (pixel-corner convention) lands at (x * sx + ox, y * sy + oy).
    """
    image = tf.convert_to_tensor(image, tf.float32)
    # An image that already fits (longer side == size) is its own resize: skipping the
    # antialiased kernel gives the same values and saves ~1.2 ms per 256 px drawing.
    resized = tf.cond(
        tf.equal(tf.reduce_max(tf.shape(image)[:2]), size),
        lambda: image,
        lambda: tf.image.resize(image, [size, size], preserve_aspect_ratio=True, antialias=True),
    )
    h, w = tf.shape(resized)[0], tf.shape(resized)[1]
    top, left = (size - h) // 2, (size - w) // 2
    out = (
        tf.pad(resized - pad_value, [[top, size - h - top], [left, size - w - left], [0, 0]])
        + pad_value
    )
    out.set_shape([size, size, image.shape[-1]])
    in_hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.stack([tf.cast(w, tf.float32) / in_hw[1], tf.cast(h, tf.float32) / in_hw[0]])
    offset = tf.cast(tf.stack([left, top]), tf.float32)
    return out, scale, offset


def resize_keep_aspect(image: tf.Tensor, size: int, pad_value: float = 1.0) -> tf.Tensor:
    """Fit [H, W, C] into [size, size, C] keeping aspect; centred, padded with `pad_value`.

    Use pad_value 1.0 (white paper) for sketches. Bilinear with antialiasing when shrinking.
    """
    return resize_pad_geometry(image, size, pad_value)[0]


def resize_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize the shorter side to `size`, then centre-crop to [size, size, C] (for photos)."""
    image = tf.convert_to_tensor(image, tf.float32)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = float(size) / tf.reduce_min(hw)
    new = tf.cast(tf.math.ceil(hw * scale), tf.int32)
    new = tf.maximum(new, size)
    resized = tf.image.resize(image, new, antialias=True)
    out = tf.image.resize_with_crop_or_pad(resized, size, size)
    out.set_shape([size, size, image.shape[-1]])
    return out


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 0.5 (stateless, `seed` int [2])."""
    return tf.image.stateless_random_flip_left_right(tf.convert_to_tensor(image, tf.float32), seed)


def affine_matrix(angle_rad, scale, tx, ty, height, width) -> tf.Tensor:
    """Output->input projective transform [8] for rotation/scale about the centre + shift.

    Follows `ImageProjectiveTransformV3`: an output pixel (x, y) samples the input at
    ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k) with k = c0 x + c1 y + 1. Shifts are
    in pixels; scale > 1 enlarges the content.
    """
    cx, cy = (tf.cast(width, tf.float32) - 1) / 2, (tf.cast(height, tf.float32) - 1) / 2
    cos, sin = tf.cos(angle_rad) / scale, tf.sin(angle_rad) / scale
    # inverse map: p_in = R(-angle)/scale (p_out - c - t) + c
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def random_affine(
    image: tf.Tensor,
    seed: tf.Tensor,
    max_degrees: float = AFFINE_MAX_DEGREES,
    max_scale: float = AFFINE_MAX_SCALE,
    max_shift: float = AFFINE_MAX_SHIFT,
    fill_value: float = 1.0,
) -> tf.Tensor:
    """Small random rotation (+-max_degrees), scale (1 +- max_scale) and shift (+-max_shift of
    the side), bilinear, constant fill (`fill_value`: 1.0 = white for sketches). The per-op
    form of the affine step that `augment_train_image` fuses into one resample."""
    image = tf.convert_to_tensor(image, tf.float32)
    u = tf.random.stateless_uniform([4], seed, -1.0, 1.0)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    m = affine_matrix(
        u[0] * max_degrees * math.pi / 180.0,
        1.0 + u[1] * max_scale,
        u[2] * max_shift * tf.cast(w, tf.float32),
        u[3] * max_shift * tf.cast(h, tf.float32),
        h,
        w,
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=m[None],
        output_shape=tf.shape(image)[:2],
        fill_value=fill_value,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    out.set_shape(image.shape)
    return out


def stroke_width_jitter(image: tf.Tensor, seed: tf.Tensor, radius: int = 1) -> tf.Tensor:
    """Thin, keep or thicken dark strokes on light paper, each with probability 1/3.

    Thickening is a min-pool (ink spreads over a (2r+1)^2 window), thinning a max-pool
    (paper eats the stroke edge), both with stride 1 and SAME padding.
    """
    return apply_stroke_width(image, stroke_width_choice(seed), radius)


def stroke_width_choice(seed: tf.Tensor) -> tf.Tensor:
    """The draw of `stroke_width_jitter`: int32 scalar, 0 thicker, 1 unchanged, 2 thinner."""
    return tf.random.stateless_uniform([], seed, 0, 3, dtype=tf.int32)


def apply_stroke_width(image: tf.Tensor, choice: tf.Tensor, radius: int = 1) -> tf.Tensor:
    """`stroke_width_jitter` with its draw given: image float32 [H, W, C], choice int32."""
    image = tf.convert_to_tensor(image, tf.float32)
    k = 2 * radius + 1
    x = image[None]
    out = tf.switch_case(
        choice,
        [
            lambda: -tf.nn.max_pool2d(-x, k, 1, "SAME"),  # thicker
            lambda: x,
            lambda: tf.nn.max_pool2d(x, k, 1, "SAME"),  # thinner
        ],
    )[0]
    out.set_shape(image.shape)
    return out


def color_jitter(image: tf.Tensor, seed: tf.Tensor, **ranges: float) -> tf.Tensor:
    """Random brightness / contrast / saturation / hue (stateless), clipped to [0, 1].

    The draws of `tf.image.stateless_random_{brightness, contrast, saturation, hue}` with
    the four seeds split from `seed` (`color_jitter_factors`, whose keywords `ranges`
    overrides), applied in that order."""
    return apply_color_jitter(image, color_jitter_factors(seed, **ranges))


def color_jitter_factors(
    seed: tf.Tensor,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.02,
) -> tf.Tensor:
    """float32 [4]: brightness delta, contrast factor, saturation factor, hue delta (turns).

    Drawn outside any XLA kernel on purpose: XLA may pick another stateless RNG algorithm
    than the CPU kernels, which would change the draws of a seed."""
    s = tf.random.experimental.stateless_split(seed, 4)
    ranges = ((-brightness, brightness), (1 - contrast, 1 + contrast))
    ranges += ((1 - saturation, 1 + saturation), (-hue, hue))
    return tf.stack(
        [tf.random.stateless_uniform([], s[i], lo, hi) for i, (lo, hi) in enumerate(ranges)]
    )


def apply_color_jitter(image: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """`color_jitter` with its draws given (`color_jitter_factors`): float32 [H, W, 3] ->
    the same, clipped to [0, 1]. XLA-compiled or plain TF ops, whichever is faster on this
    machine (`COLOR_JITTER`, `sketch_tf.core.kernels`); the size key is the image side."""
    image = tf.convert_to_tensor(image, tf.float32)
    return COLOR_JITTER.pick(image.shape[0])(image, factors)


def _color_jitter_ops(image: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """The computation of `apply_color_jitter` (both of its implementations)."""
    x = tf.image.adjust_brightness(tf.convert_to_tensor(image, tf.float32), factors[0])
    x = tf.image.adjust_contrast(x, factors[1])
    x = tf.image.adjust_saturation(x, factors[2])
    x = tf.image.adjust_hue(x, factors[3])
    return tf.clip_by_value(x, 0.0, 1.0)


def preprocess(
    encoded: tf.Tensor,
    is_sketch,
    size: int,
    training: bool,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """Decode + resize (+ augment when training) one image -> float32 [size, size, 3] in [0, 1].

    Evaluation: sketches keep their aspect with white padding (`resize_keep_aspect`), photos
    are resized and centre-cropped (`resize_crop`). Images with a long side over
    `MAX_SIDE_FACTOR * size` are box-averaged to it first (`decode_image`'s `max_side`).
    Training: `augment_train_image` (the one train-time path: fit, flip, small affine and
    stroke-width / colour jitter, `seed` int64 [2]). `is_sketch` may be a Python bool or a
    scalar bool tensor.
    """
    if training:
        if isinstance(is_sketch, bool):
            return augment_train_image(encoded, is_sketch, size, seed)
        return tf.cond(
            is_sketch,
            lambda: augment_train_image(encoded, True, size, seed),
            lambda: augment_train_image(encoded, False, size, seed),
        )
    img = decode_image(encoded, max_side=MAX_SIDE_FACTOR * size)
    if isinstance(is_sketch, bool):
        return resize_keep_aspect(img, size, 1.0) if is_sketch else resize_crop(img, size)
    return tf.cond(
        is_sketch, lambda: resize_keep_aspect(img, size, 1.0), lambda: resize_crop(img, size)
    )


def _mat3(m8: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.concat([m8[:6], [0.0, 0.0, 1.0]], 0), [3, 3])


def augment_train_image(encoded: tf.Tensor, is_sketch: bool, size: int, seed: tf.Tensor):
    """Fast training-time `preprocess`: decode + resize + flip + small affine in ONE resample.

    The fit (sketch: keep aspect, white pad; photo: shorter side to `size`, centre crop), the
    horizontal flip (p = 0.5) and the random affine (same ranges as `random_affine`) are
    composed into one output->input projective matrix and applied with one bilinear resample
    of the decoded uint8 image (white fill outside; `warp`, XLA-compiled or not per
    machine). An image more than 2x larger than the fit is first shrunk with an antialiased
    resize (so strokes do not alias); otherwise the resize is folded into the warp (no
    antialias; the scale is >= 0.5, where a bilinear sample loses little). Then sketches get
    `stroke_width_jitter` and photos `color_jitter`, on the float result.

    Same augmentation distribution and random draws as the per-op composition (resize,
    `random_flip`, `random_affine`, `stroke_width_jitter` / `color_jitter`) with the same seed,
    not the same pixels: one resample instead of two or three (mean
    difference < 0.02 on smooth images), and a photo's rotated-in corners show the uncropped
    image rather than white fill. Every training dataset uses it (through `preprocess`).

    Args:
      encoded: scalar tf.string, PNG/JPEG bytes. is_sketch: Python bool. size: output side.
      seed: int64 [2] stateless seed.

    Returns:
      float32 [size, size, 3] in [0, 1].
    """
    img = decode_image(encoded, tf.uint8, max_side=MAX_SIDE_FACTOR * size)
    s = tf.random.experimental.stateless_split(seed, 3)
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    fsize = float(size)
    scale = (fsize / tf.reduce_max(hw)) if is_sketch else (fsize / tf.reduce_min(hw))

    def shrink():
        new = tf.maximum(tf.cast(tf.math.round(hw * scale), tf.int32), 1)
        small = tf.image.resize(img, new, antialias=True)
        return tf.cast(tf.clip_by_value(tf.math.round(small), 0.0, 255.0), tf.uint8)

    img = tf.cond(scale < 0.5, shrink, lambda: img)
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    scale = (fsize / tf.reduce_max(hw)) if is_sketch else (fsize / tf.reduce_min(hw))
    content = hw * scale  # (h, w) of the fitted content in output pixels
    off = (fsize - content) / 2.0  # top-left of the content (negative = cropped)
    # fit^-1: output (x, y) -> input, half-pixel centres: x_in = (x + .5 - ox) / scale - .5
    inv = 1.0 / scale
    fit = tf.stack(
        [
            [inv, 0.0, (0.5 - off[1]) * inv - 0.5],
            [0.0, inv, (0.5 - off[0]) * inv - 0.5],
            [0.0, 0.0, 1.0],
        ]
    )
    flip = tf.random.stateless_uniform([], s[0], 0, 1.0) < 0.5
    fl = tf.where(flip, -1.0, 1.0)
    flip_m = tf.stack(
        [[fl, 0.0, tf.where(flip, fsize - 1.0, 0.0)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    )
    u = tf.random.stateless_uniform([4], s[1], -1.0, 1.0)
    aff = affine_matrix(
        u[0] * AFFINE_MAX_DEGREES * math.pi / 180.0,
        1.0 + u[1] * AFFINE_MAX_SCALE,
        u[2] * AFFINE_MAX_SHIFT * fsize,
        u[3] * AFFINE_MAX_SHIFT * fsize,
        size,
        size,
    )
    m = tf.linalg.matmul(fit, tf.linalg.matmul(flip_m, _mat3(aff)))
    # The random draws stay outside any XLA kernel (see `color_jitter_factors`).
    jitter = stroke_width_choice(s[2]) if is_sketch else color_jitter_factors(s[2])
    out = warp(img, tf.reshape(m, [9])[:6], size)
    if is_sketch:
        return apply_stroke_width(out, jitter)
    return apply_color_jitter(out, jitter)


def warp(img: tf.Tensor, m6: tf.Tensor, size: int) -> tf.Tensor:
    """The one resample of `augment_train_image`: bilinear, white outside the image.

    img: uint8 [H, W, 3]; m6: float32 [6], output pixel (x, y) -> input
    (a0 x + a1 y + a2, b0 x + b1 y + b2) in pixel indices (the convention of
    `ImageProjectiveTransformV3`); size: the output side. Returns float32 [size, size, 3] in
    [0, 1]. XLA-compiled (`_warp`) or `ImageProjectiveTransformV3`, whichever is faster on
    this machine (`WARP`, `sketch_tf.core.kernels`)."""
    return WARP.pick(size)(img, m6, size)


def _warp_bucketed(img: tf.Tensor, m6: tf.Tensor, size: int) -> tf.Tensor:
    """`warp` by the XLA kernel `_warp_xla`."""
    # White below / right of the image up to a power-of-two size (>= 64): the warp's fill is
    # white there anyway, and the XLA kernel then compiles once per size bucket, not per image
    # size of a dataset.
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    padded = tf.pad(
        img, [[0, pow2_at_least(h, 64) - h], [0, pow2_at_least(w, 64) - w], [0, 0]],
        constant_values=255,
    )  # fmt: skip
    return _warp_xla(padded, m6, size)


def _warp_projective(img: tf.Tensor, m6: tf.Tensor, size: int) -> tf.Tensor:
    """`warp` by `ImageProjectiveTransformV3` (plain TF: bilinear, CONSTANT white fill) on the
    float image, so that it gives `_warp`'s values to float tolerance."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(img, tf.float32)[None] * (1.0 / 255.0),
        transforms=tf.concat([m6, [0.0, 0.0]], 0)[None],
        output_shape=[size, size],
        fill_value=1.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    out.set_shape([size, size, 3])
    return out


def _warp(img: tf.Tensor, m6: tf.Tensor, size: int) -> tf.Tensor:
    """`warp` as one gather-based kernel (XLA-compiled as `_warp_xla`).

    img: uint8 [H, W, 3] (white beyond the content); m6: float32 [6] (see `warp`). Bilinear,
    each neighbour outside the image reads white (the CONSTANT fill of
    `ImageProjectiveTransformV3`). Returns float32 [size, size, 3] in [0, 1].

    The jitter that follows is a separate kernel on purpose: fused into this one, XLA would
    recompute the four gathers for every read of a pixel (the 3x3 stroke filter, the colour
    space conversions).
    """
    x = tf.pad(
        tf.cast(img, tf.float32) * (1.0 / 255.0), [[1, 1], [1, 1], [0, 0]], constant_values=1.0
    )
    hp, wp = tf.shape(x)[0], tf.shape(x)[1]
    grid = tf.range(size, dtype=tf.float32)
    gx, gy = grid[None, :], grid[:, None]
    # +1: the one-pixel white border; clamping into it is exact (all white beyond).
    xs = tf.clip_by_value(m6[0] * gx + m6[1] * gy + m6[2] + 1.0, 0.0, tf.cast(wp - 1, tf.float32))
    ys = tf.clip_by_value(m6[3] * gx + m6[4] * gy + m6[5] + 1.0, 0.0, tf.cast(hp - 1, tf.float32))
    x0f, y0f = tf.floor(xs), tf.floor(ys)
    wx, wy = (xs - x0f)[..., None], (ys - y0f)[..., None]
    x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, wp - 1), tf.minimum(y0 + 1, hp - 1)
    flat = tf.reshape(x, [-1, 3])

    def at(yy, xx):
        return tf.gather(flat, yy * wp + xx)

    top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy  # [size, size, 3]


_warp_xla = tf.function(_warp, jit_compile=True, reduce_retracing=True)


def _warp_example(size: int) -> tuple:
    """A representative `warp` call: a 227 px photo (PACS) fitted to `size` with a small turn."""
    rng = np.random.default_rng(0)
    img = tf.constant(rng.integers(0, 256, (227, 227, 3), dtype=np.uint8))
    a, s = 0.1, 227.0 / size
    c, n = s * math.cos(a), s * math.sin(a)
    return img, tf.constant([c, -n, 3.0, n, c, -2.0], tf.float32), size


def _color_jitter_example(size: int) -> tuple:
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(size=(size, size, 3)).astype(np.float32))
    return image, tf.constant([0.1, 1.1, 0.9, 0.01], tf.float32)


#: The training resample (`warp`) and colour jitter (`apply_color_jitter`): XLA beat the TF
#: kernels on an AVX-512 CPU (input_bench ratio_vs_pil 2.80 -> 4.00) but lost on an AVX2 one
#: (2.72 -> 2.00, issue 26), so each machine measures both (`sketch_tf.core.kernels`).
WARP = kernels.DualKernel("train_warp", _warp_bucketed, _warp_projective, _warp_example, 224)
COLOR_JITTER = kernels.DualKernel(
    "color_jitter",
    tf.function(_color_jitter_ops, jit_compile=True, reduce_retracing=True),
    _color_jitter_ops,
    _color_jitter_example,
    224,
)


# ---- record streams ------------------------------------------------------------------------------
def stream_seed(seed: int, offset: int, index: int) -> int:
    """The shuffle seed of the `index`-th per-class (or per-group) stream of a dataset.

    A batch builder with seed `seed` mixes several sets of streams (e.g. one for the anchors,
    one for the positives, one for the negatives); each set takes its own small `offset` and
    stream `index` (0, 1, ...) gets ``seed + offset + STREAM_SEED_STRIDE * (index + 1)``, so
    no two streams of a dataset shuffle alike. Python int; the values are part of what makes
    a training run reproducible, so the formula must not change.
    """
    return seed + offset + STREAM_SEED_STRIDE * (index + 1)


def class_domain_stream(
    dataset_dir, manifest, class_id: int, domain: str | None, seed: int, shuffle_buffer: int
) -> tf.data.Dataset:
    """Endless shuffled serialized records of one class (and domain, if given).

    Reads only the shards of that class (and domain) when the writer grouped them so
    (`group_by`), otherwise every shard, filtered on the parsed class id (and domain).
    `seed`: the stream's shuffle seed (`stream_seed`)."""
    cname = manifest["classes"][class_id]
    exact = [
        s
        for s in manifest["shards"]
        if s.get("class") == cname and (domain is None or s.get("domain") == domain)
    ]
    grouped = manifest.get("group_by") in ("class", "domain_class")
    if grouped and exact and (domain is None or manifest.get("group_by") == "domain_class"):
        shards, need_filter = exact, False
    else:
        shards, need_filter = manifest["shards"], True
    ds = tfrecord.record_dataset(
        dataset_dir, shards=shards, shuffle_shards=True, seed=seed, manifest=manifest
    )
    if need_filter:
        spec = {
            schema.CLASS_ID: tf.io.FixedLenFeature([], tf.int64),
            schema.DOMAIN: tf.io.FixedLenFeature([], tf.string),
        }
        if manifest["kind"] != schema.KIND_LABELLED_IMAGE:
            spec = {schema.CATEGORY_ID: tf.io.FixedLenFeature([], tf.int64)}

        def keep(rec):
            f = tf.io.parse_single_example(rec, spec)
            ok = tf.equal(f.get(schema.CLASS_ID, f.get(schema.CATEGORY_ID)), class_id)
            if domain is not None and schema.DOMAIN in f:
                ok = tf.logical_and(ok, tf.equal(f[schema.DOMAIN], domain))
            return ok

        ds = ds.filter(keep)
    return ds.repeat().shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)


def check_classes(manifest, classes, domains, where) -> list[int]:
    """Sorted class ids of the class names `classes` (every class when None), each checked to
    have a record in every domain of `domains`; ValueError naming `where` otherwise."""
    names = manifest["classes"]
    if classes is None:
        ids = list(range(len(names)))
    else:
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise ValueError(f"{where}: classes {unknown} are not in the dataset")
        ids = sorted(names.index(c) for c in classes)
    per_dc = manifest["counts"]["per_domain_class"]
    for d in domains:
        if d not in per_dc:
            raise ValueError(f"{where}: domain {d!r} not in dataset (has {sorted(per_dc)})")
        empty = [names[i] for i in ids if per_dc[d].get(names[i], 0) == 0]
        if empty:
            raise ValueError(f"{where}: classes {empty} have no {d!r} record")
    if not ids:
        raise ValueError(f"{where}: no classes selected")
    return ids


def batched(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """The last step of every batch builder: `ds` in batches of `batch_size` (the GLOBAL batch
    size), prefetched, with `dataset_options()`."""
    return (
        ds.batch(batch_size, drop_remainder=drop_remainder)
        .prefetch(AUTOTUNE)
        .with_options(dataset_options())
    )


def element_seeds(seed: int) -> tf.data.Dataset:
    """Endless per-element stateless seeds [seed, i] (int64 [2])."""
    return tf.data.Dataset.counter().map(lambda i: tf.stack([tf.constant(seed, tf.int64), i]))


def labelled_records(
    dataset_dir, domains=None, classes=None, shuffle_shards: bool = False, seed: int = 0
) -> tf.data.Dataset:
    """Parsed labelled-image records of `dataset_dir`, one pass, restricted to `domains` /
    `classes` (names; unknown classes fail naming the dataset) when given."""
    manifest = tfrecord.read_manifest(dataset_dir, kind=schema.KIND_LABELLED_IMAGE)
    ds = tfrecord.record_dataset(
        dataset_dir, shuffle_shards=shuffle_shards, seed=seed, manifest=manifest
    ).map(schema.parse_labelled_image, num_parallel_calls=AUTOTUNE)
    if classes is not None:
        ids = tf.constant(check_classes(manifest, classes, [], dataset_dir), tf.int64)
        ds = ds.filter(lambda r: tf.reduce_any(tf.equal(r[schema.CLASS_ID], ids)))
    if domains is not None:
        doms = tf.constant(list(domains))
        ds = ds.filter(lambda r: tf.reduce_any(tf.equal(r[schema.DOMAIN], doms)))
    return ds


def labelled_dataset(
    dataset_dir,
    batch_size: int,
    image_size: int = 224,
    training: bool = False,
    seed: int = 0,
    classes=None,
    domains=None,
    sketch_domain: str = "sketch",
    shuffle_buffer: int = 1024,
    drop_remainder: bool | None = None,
) -> tf.data.Dataset:
    """Batches of labelled images: {"image" [B,S,S,3] float32, "class_id" [B] int64,
    "domain" [B] string, "instance_id" [B] string, "style_id", "content_id" [B] int64,
    "image_key" [B] int64 (the image's cache key, `cache.image_keys`)}.

    Evaluation (`training=False`): one pass in shard order, no augmentation, last batch kept.
    Training: endless, shard order and records shuffled (seeded), augmented, full batches.
    `classes` / `domains` restrict the records (filter on parsed fields).
    """
    ds = labelled_records(dataset_dir, domains, classes, shuffle_shards=training, seed=seed)
    if training:
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed)
    ds = tf.data.Dataset.zip((ds, element_seeds(seed)))

    def prep(r, s):
        img = preprocess(
            r[schema.IMAGE], tf.equal(r[schema.DOMAIN], sketch_domain), image_size, training, s
        )
        return {
            "image": img,
            "class_id": r[schema.CLASS_ID],
            "domain": r[schema.DOMAIN],
            "instance_id": r[schema.INSTANCE_ID],
            "style_id": r[schema.STYLE_ID],
            "content_id": r[schema.CONTENT_ID],
            "image_key": cache.image_keys(r[schema.IMAGE]),
        }

    ds = ds.map(prep, num_parallel_calls=AUTOTUNE)
    drop = training if drop_remainder is None else drop_remainder
    return batched(ds, batch_size, drop)


def labelled_image_bytes(dataset_dir, domains=None, classes=None) -> tf.data.Dataset:
    """One pass over the encoded images of a labelled-image dataset, in shard order:
    (int64 cache key `cache.image_keys`, string encoded image) per record, restricted to
    `domains` / `classes` (names) when given. The input of `cache.cached_features`."""
    return (
        labelled_records(dataset_dir, domains, classes)
        .map(
            lambda r: (cache.image_keys(r[schema.IMAGE]), r[schema.IMAGE]),
            num_parallel_calls=AUTOTUNE,
        )
        .with_options(dataset_options())
    )


def keys_by_domain_class(dataset_dir, manifest) -> dict[tuple[str, int], np.ndarray]:
    """{(domain, class_id): int64 cache keys (`cache.image_keys`) of its labelled-image records,
    in shard order}, read in one pass (nothing decoded)."""
    ds = tfrecord.record_dataset(dataset_dir, manifest=manifest).map(
        schema.parse_labelled_image, num_parallel_calls=AUTOTUNE
    )
    ds = ds.map(
        lambda r: (r[schema.DOMAIN], r[schema.CLASS_ID], cache.image_keys(r[schema.IMAGE])),
        num_parallel_calls=AUTOTUNE,
    ).batch(4096)
    groups: dict[tuple[str, int], list[np.ndarray]] = {}
    for domains, classes, keys in ds.as_numpy_iterator():
        for d, c, k in zip(domains, classes, keys, strict=True):
            groups.setdefault((d.decode(), int(c)), []).append(k)
    return {g: np.asarray(v, np.int64) for g, v in groups.items()}
