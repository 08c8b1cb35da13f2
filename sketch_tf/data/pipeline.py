"""tf.data input layer: decode, resize, augment, class-balanced P x K batches, triplets, pairs.

Every image op works on one image (eagerly or inside `Dataset.map`) and every random op is
*stateless*: it takes a `seed` int64 [2] tensor, so a dataset built with a given `seed` yields
the same batches every time (per-element seeds are `[seed, element index]`).

Datasets never materialise records: each (domain, class) gets its own stream over the shards
that hold it (the writer's `group_by="domain_class"` makes these exact; otherwise all shards
are read and filtered), streams are mixed with `tf.data.Dataset.choose_from_datasets` driven
by a seeded choice stream, and decoding / augmentation run with AUTOTUNE parallelism and
prefetch. Output batches have the GLOBAL batch size (the training loop splits them with
`strategy.experimental_distribute_dataset`) and static shapes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from sketch_tf.data import cache, schema, tfrecord

AUTOTUNE = tf.data.AUTOTUNE
NEGATIVES = ("random", "class_embedding")
#: How `triplet_batches` draws the negative class from class embeddings (`negative_class_logits`).
NEGATIVE_SAMPLING = ("inverse_distance", "softmax")
#: How `triplet_batches` draws the anchor class (`class_pairs`).
ANCHOR_SAMPLING = ("uniform", "sketch_count")
#: What `triplet_batches` yields per image: the preprocessed image or its cache key.
TRIPLET_OUTPUTS = ("images", "keys")

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
    """`color_jitter` with its draws given (`color_jitter_factors`): float32 [H, W, 3]."""
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
    of the decoded uint8 image (white fill outside), XLA-compiled together with the jitter
    (`_warp_and_jitter`). An image
    more than 2x larger than the fit is first shrunk with an antialiased resize (so strokes
    do not alias); otherwise the resize is folded into the warp (no antialias; the scale is
    >= 0.5, where a bilinear sample loses little). Then sketches get `stroke_width_jitter`
    and photos `color_jitter`, on the float result.

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
    # White below / right of the image up to a power-of-two size (>= 64): the warp's fill is
    # white there anyway, and the XLA kernel then compiles once per size bucket, not per image
    # size of a dataset.
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    padded = tf.pad(
        img, [[0, pow2_at_least(h, 64) - h], [0, pow2_at_least(w, 64) - w], [0, 0]],
        constant_values=255,
    )  # fmt: skip
    # The random draws stay outside the XLA kernel (see `color_jitter_factors`).
    jitter = stroke_width_choice(s[2]) if is_sketch else color_jitter_factors(s[2])
    out = _warp_xla(padded, tf.reshape(m, [9])[:6], size)
    if is_sketch:
        return apply_stroke_width(out, jitter)
    return _apply_color_jitter_xla(out, jitter)


def pow2_at_least(n: tf.Tensor, minimum: int) -> tf.Tensor:
    """The smallest power of two >= max(n, minimum), int32 scalar tensor (n: int scalar).

    Shape buckets for XLA kernels: one compilation per bucket instead of per size."""
    n = tf.maximum(tf.cast(n, tf.int32), minimum)
    p = tf.bitwise.left_shift(
        1, tf.cast(tf.math.ceil(tf.math.log(tf.cast(n, tf.float32)) / math.log(2.0)), tf.int32)
    )
    return tf.where(p < n, 2 * p, p)  # guards float rounding of the logarithm


def _warp(img: tf.Tensor, m6: tf.Tensor, size: int) -> tf.Tensor:
    """The one resample of `augment_train_image` (XLA-compiled as `_warp_xla`).

    img: uint8 [H, W, 3] (white beyond the content); m6: float32 [6], output pixel (x, y) ->
    input (a0 x + a1 y + a2, b0 x + b1 y + b2) in pixel indices (the convention of
    `ImageProjectiveTransformV3`). Bilinear, each neighbour outside the image reads white (the
    op's CONSTANT fill). Returns float32 [size, size, 3] in [0, 1].

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
_apply_color_jitter_xla = tf.function(apply_color_jitter, jit_compile=True, reduce_retracing=True)


# ---- record streams ------------------------------------------------------------------------------
def _options() -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    opts.autotune.enabled = True
    return opts


def _class_domain_stream(
    dataset_dir, manifest, class_id: int, domain: str | None, seed: int, shuffle_buffer: int
) -> tf.data.Dataset:
    """Endless shuffled serialized records of one class (and domain, if given)."""
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


def _check_classes(manifest, classes, domains, where) -> list[int]:
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


def _seeds(seed: int) -> tf.data.Dataset:
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
        ids = tf.constant(_check_classes(manifest, classes, [], dataset_dir), tf.int64)
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
    ds = tf.data.Dataset.zip((ds, _seeds(seed)))

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
    return ds.batch(batch_size, drop_remainder=drop).prefetch(AUTOTUNE).with_options(_options())


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
        .with_options(_options())
    )


def pk_batches(
    dataset_dir,
    p: int,
    k: int,
    image_size: int = 224,
    seed: int = 0,
    domain: str | None = None,
    classes=None,
    training: bool = True,
    sketch_domain: str = "sketch",
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """Endless class-balanced batches: P distinct classes x K images each (global batch P*K).

    Returns dict {"image" [P*K,S,S,3], "class_id" [P*K] int64, "domain" [P*K] string}; rows
    are grouped by class (K consecutive rows per class). `domain` restricts to one domain.
    """
    manifest = tfrecord.read_manifest(dataset_dir, kind=schema.KIND_LABELLED_IMAGE)
    doms = [domain] if domain else []
    ids = _check_classes(manifest, classes, doms, dataset_dir)
    if p > len(ids):
        raise ValueError(f"p={p} exceeds the {len(ids)} available classes")
    streams = [
        _class_domain_stream(
            dataset_dir, manifest, c, domain, seed + 7919 * (i + 1), shuffle_buffer
        )
        for i, c in enumerate(ids)
    ]

    def pick(s):
        order = tf.argsort(tf.random.stateless_uniform([len(ids)], s))[:p]
        return tf.data.Dataset.from_tensor_slices(tf.repeat(order, k))

    choice = _seeds(seed + 1).flat_map(pick)
    records = tf.data.Dataset.choose_from_datasets(
        streams, choice.map(lambda c: tf.cast(c, tf.int64))
    )
    ds = tf.data.Dataset.zip((records, _seeds(seed))).map(
        lambda rec, s: _prep_labelled(rec, s, image_size, training, sketch_domain),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.batch(p * k, drop_remainder=True).prefetch(AUTOTUNE).with_options(_options())


def _prep_labelled(rec, s, image_size, training, sketch_domain):
    r = schema.parse_labelled_image(rec)
    img = preprocess(
        r[schema.IMAGE], tf.equal(r[schema.DOMAIN], sketch_domain), image_size, training, s
    )
    return {"image": img, "class_id": r[schema.CLASS_ID], "domain": r[schema.DOMAIN]}


def _class_distances(embeddings) -> np.ndarray:
    e = np.asarray(embeddings, np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"class embeddings must be [C >= 2, D], got {e.shape}")
    if not np.all(np.isfinite(e)):
        raise ValueError("class embeddings contain NaN or inf")
    return np.sqrt(np.maximum(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1), 0.0))


def negative_class_logits(
    embeddings: np.ndarray, sampling: str = "inverse_distance", temperature: float | None = None
) -> np.ndarray:
    """[C, C] logits (unnormalised log-probabilities) of the negative class n given anchor a.

    With d[a, n] = ||e_a - e_n|| (Euclidean distance between class embeddings [C, D]):

    - ``sampling="inverse_distance"`` (the original zero-shot SBIR code, its
      ``SketchyTrainDataset``): P(n | a) proportional to ``1 / d[a, n]`` over n != a, so
      logits = ``-log d``. A zero distance between two *different* classes (duplicate
      embeddings) gets weight 1, as upstream does (it sets the 0/0 similarity to 1.0).
      `temperature` must be None.
    - ``sampling="softmax"``: P(n | a) = softmax over n != a of ``-d[a, n] / temperature``
      (temperature > 0, 1.0 when None).

    Closer classes (harder negatives) are drawn more often either way; the diagonal is -inf (a
    class is never its own negative). `negative_class_probabilities` gives the normalised rows.

    Returns:
      float32 [C, C]; ``tf.random.stateless_categorical`` of row a draws n.
    """
    if sampling not in NEGATIVE_SAMPLING:
        raise ValueError(f"sampling must be one of {NEGATIVE_SAMPLING}, got {sampling!r}")
    d = _class_distances(embeddings)
    if sampling == "softmax":
        t = 1.0 if temperature is None else float(temperature)
        if t <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        logits = -d / t
    else:
        if temperature is not None:
            raise ValueError(
                "temperature applies to sampling='softmax' only, got temperature="
                f"{temperature} with sampling='inverse_distance'"
            )
        logits = -np.log(np.where(d > 0, d, 1.0))  # weight 1 / d, or 1 where d == 0
    np.fill_diagonal(logits, -np.inf)
    return logits.astype(np.float32)


def negative_class_probabilities(
    embeddings: np.ndarray, sampling: str = "inverse_distance", temperature: float | None = None
) -> np.ndarray:
    """[C, C] float64 P(negative class n | anchor class a): rows sum to 1, zero diagonal.

    The normalised `negative_class_logits` (same arguments).
    """
    logits = negative_class_logits(embeddings, sampling, temperature).astype(np.float64)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def class_pairs(
    negative_logits: np.ndarray, seed: int, anchor_weights: np.ndarray | None = None
) -> tf.data.Dataset:
    """Endless (anchor, negative) class index pairs: int64 scalars in [0, C).

    The anchor a is uniform over the C classes (`anchor_weights` None) or drawn with
    probability proportional to `anchor_weights` [C] (e.g. the per-class sketch counts: the
    class distribution of a pass over the training sketches); the negative n is drawn from row
    a of `negative_logits` [C, C] (`negative_class_logits`, or 0 off the diagonal for uniform).
    Element i uses the stateless seed ``[seed, i]``.
    """
    logits_t = tf.constant(np.asarray(negative_logits, np.float32))
    n = int(logits_t.shape[0])
    anchor_logits = None
    if anchor_weights is not None:
        w = np.asarray(anchor_weights, np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"anchor_weights must be {n} finite weights >= 0, got {w}")
        with np.errstate(divide="ignore"):
            anchor_logits = tf.constant(np.log(w)[None].astype(np.float32))

    def choose(s):
        s2 = tf.random.experimental.stateless_split(s, 2)
        if anchor_logits is None:
            a = tf.random.stateless_uniform([], s2[0], 0, n, dtype=tf.int64)
        else:
            a = tf.random.stateless_categorical(anchor_logits, 1, s2[0], dtype=tf.int64)[0, 0]
        neg = tf.random.stateless_categorical(logits_t[a][None], 1, s2[1], dtype=tf.int64)[0, 0]
        return a, neg

    return _seeds(seed).map(choose)


def _keys_by_domain_class(dataset_dir, manifest) -> dict[tuple[str, int], np.ndarray]:
    """{(domain, class_id): int64 cache keys of its records, in shard order} (one pass)."""
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


def triplet_batches(
    dataset_dir,
    batch_size: int,
    image_size: int = 224,
    seed: int = 0,
    negatives: str = "random",
    class_embeddings=None,
    temperature: float | None = None,
    classes=None,
    sketch_domain: str = "sketch",
    photo_domain: str = "photo",
    training: bool = True,
    shuffle_buffer: int = 256,
    negative_sampling: str = "inverse_distance",
    anchor_sampling: str = "uniform",
    output: str = "images",
) -> tf.data.Dataset:
    """Endless cross-domain triplets: sketch anchor of class a, photo of class a, photo of n != a.

    Args:
      batch_size: GLOBAL batch size.
      negatives: "random" (n uniform over the other classes) or "class_embedding" (n drawn
        with `negative_class_logits(class_embeddings, negative_sampling, temperature)` from
        `class_embeddings`, a [C, D] array over the dataset's full class list or a path to such
        a .npy, restricted to `classes`).
      negative_sampling: "inverse_distance" (the original's P(n | a) ~ 1 / d) or "softmax"
        (softmax of -d / temperature); only with negatives="class_embedding".
      temperature: softmax temperature (None = 1.0); only with negative_sampling="softmax".
      anchor_sampling: "uniform" (the anchor class uniform over `classes`) or "sketch_count"
        (proportional to each class's number of sketches in the manifest, i.e. the class mix
        of the original's pass over every training sketch).
      classes: restrict to these class names (e.g. the seen classes of a split).
      training: True augments every image (the fused `augment_train_image`); False gives the
        evaluation preprocessing (fit + centre crop/pad, no randomness in the pixels). The
        streams are endless and shuffled either way.
      output: "images" (decoded, preprocessed images) or "keys" (only the images' int64 cache
        keys `cache.image_keys`, nothing decoded and no shard read after one pass that lists
        each (domain, class)'s keys: for training on cached trunk features). Both draw the
        same classes (`class_pairs`), but the records within a class in another order.

    Returns:
      dict {"sketch", "photo_pos", "photo_neg": [B,S,S,3] float32, "class_id",
      "neg_class_id": [B] int64 (dataset class ids)}; with output="keys", "sketch_key",
      "photo_pos_key", "photo_neg_key": [B] int64 instead of the images.
    """
    if output not in TRIPLET_OUTPUTS:
        raise ValueError(f"output must be one of {TRIPLET_OUTPUTS}, got {output!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    manifest = tfrecord.read_manifest(dataset_dir, kind=schema.KIND_LABELLED_IMAGE)
    ids = _check_classes(manifest, classes, [sketch_domain, photo_domain], dataset_dir)
    n = len(ids)
    if n < 2:
        raise ValueError("triplets need at least 2 classes")
    if anchor_sampling not in ANCHOR_SAMPLING:
        raise ValueError(
            f"anchor_sampling must be one of {ANCHOR_SAMPLING}, got {anchor_sampling!r}"
        )
    if negative_sampling not in NEGATIVE_SAMPLING:
        raise ValueError(
            f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {negative_sampling!r}"
        )
    if negatives == "class_embedding":
        if class_embeddings is None:
            raise ValueError("negatives='class_embedding' needs class_embeddings")
        if isinstance(class_embeddings, str | os.PathLike):
            path = Path(class_embeddings)
            if not path.is_file():
                raise ValueError(f"class embeddings file {path} is missing")
            class_embeddings = np.load(path)
        emb = np.asarray(class_embeddings)
        if emb.ndim != 2 or emb.shape[0] != len(manifest["classes"]):
            raise ValueError(
                f"class embeddings must be [{len(manifest['classes'])}, D] (one row per "
                f"dataset class), got {emb.shape}"
            )
        logits = negative_class_logits(emb[ids], negative_sampling, temperature)
    else:
        logits = np.full((n, n), 0.0, np.float32)
        np.fill_diagonal(logits, -np.inf)
    anchor_weights = None
    if anchor_sampling == "sketch_count":
        per_class = manifest["counts"]["per_domain_class"][sketch_domain]
        anchor_weights = [per_class.get(manifest["classes"][c], 0) for c in ids]
    pairs = class_pairs(logits, seed + 1, anchor_weights)

    if output == "keys":
        # Nothing to decode: the streams are the records' cache keys, read once into memory
        # (a few bytes per record) instead of re-reading and filtering shards per class.
        by_class = _keys_by_domain_class(dataset_dir, manifest)

        def stream(domain, c, seed_c):
            keys = by_class.get((domain, c), np.zeros([0], np.int64))
            return (
                tf.data.Dataset.from_tensor_slices(keys)
                .repeat()
                .shuffle(shuffle_buffer, seed=seed_c, reshuffle_each_iteration=True)
            )
    else:

        def stream(domain, c, seed_c):
            return _class_domain_stream(dataset_dir, manifest, c, domain, seed_c, shuffle_buffer)

    def streams(domain, offset):
        return [stream(domain, c, seed + offset + 7919 * (i + 1)) for i, c in enumerate(ids)]

    sk = tf.data.Dataset.choose_from_datasets(streams(sketch_domain, 11), pairs.map(lambda a, b: a))
    pos = tf.data.Dataset.choose_from_datasets(streams(photo_domain, 23), pairs.map(lambda a, b: a))
    neg = tf.data.Dataset.choose_from_datasets(streams(photo_domain, 37), pairs.map(lambda a, b: b))
    ids_t = tf.constant(ids, tf.int64)

    def prep(sk_rec, pos_rec, neg_rec, pair, s):
        labels = {
            "class_id": tf.gather(ids_t, pair[0]),
            "neg_class_id": tf.gather(ids_t, pair[1]),
        }
        if output == "keys":  # the streams hold keys already
            return {"sketch_key": sk_rec, "photo_pos_key": pos_rec, "photo_neg_key": neg_rec,
                    **labels}  # fmt: skip
        s3 = tf.random.experimental.stateless_split(s, 3)
        r_sk = schema.parse_labelled_image(sk_rec)
        r_pos = schema.parse_labelled_image(pos_rec)
        r_neg = schema.parse_labelled_image(neg_rec)
        images = [
            preprocess(r[schema.IMAGE], dom, image_size, training, s3[i])
            for i, (r, dom) in enumerate(((r_sk, True), (r_pos, False), (r_neg, False)))
        ]
        return {"sketch": images[0], "photo_pos": images[1], "photo_neg": images[2], **labels}

    ds = tf.data.Dataset.zip((sk, pos, neg, pairs, _seeds(seed))).map(
        prep, num_parallel_calls=AUTOTUNE
    )
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE).with_options(_options())


# ---- style-labelled triplets (style-aware SBIR) -------------------------------------------------
#: `style_triplet_batches`: which images may be the style negative (always another style).
STYLE_NEGATIVE_RULES = ("same_content", "any")


class StyleIndex:
    """What a style-labelled record set holds, read in one pass (keys and labels only).

    Labels: `content` = the record's class id (its `content_id` must be that class or unset
    only for sketches); `style` = the index of the record's domain in `styles` (the gallery
    media, sorted), checked against the record's `style_id`, which must be set (>= 0) and be
    the same for every record of a domain.

    Attributes:
      dataset_dir: the record folder.
      manifest: its manifest.
      classes: content class names (the dataset's class list).
      styles: gallery style names (domains), sorted; style label = index here.
      sketch_domain: the domain of the sketch queries.
      groups: int64 [G, 2] (content, style) of every non-empty gallery group, sorted.
      group_keys: list of G int64 arrays, the cache keys of each group's images (shard order).
      sketch_keys: {content: int64 array of the keys of its sketches}.
      sketch_dir, sketch_manifest: where the sketches are (`dataset_dir` unless `sketch_dir`).
      sketch_class_of: {content: class id of its sketches in `sketch_dir`'s class list}.

    Args:
      sketch_dir: another record folder whose `sketch_domain` records are the sketches (e.g.
        rasterised Quick, Draw! drawings for a gallery without sketches), matched to the
        contents by class name; the sketches of `dataset_dir` are then ignored.
      sketch_class_names: {class name in `sketch_dir`: content name} for names that differ
        (Quick, Draw!'s "car" for BAM's "cars").
    """

    def __init__(
        self,
        dataset_dir,
        styles,
        sketch_domain="sketch",
        classes=None,
        sketch_dir=None,
        sketch_class_names=None,
    ):
        self.dataset_dir = str(dataset_dir)
        self.manifest = tfrecord.read_manifest(dataset_dir, kind=schema.KIND_LABELLED_IMAGE)
        names = list(self.manifest["classes"])
        self.classes = names
        self.styles = sorted(styles)
        self.sketch_domain = sketch_domain
        wanted = None if classes is None else set(_check_classes(self.manifest, classes, [],
                                                                 self.dataset_dir))  # fmt: skip
        style_of = {s: i for i, s in enumerate(self.styles)}
        ds = tfrecord.record_dataset(dataset_dir, manifest=self.manifest).map(
            schema.parse_labelled_image, num_parallel_calls=AUTOTUNE
        )
        ds = ds.map(
            lambda r: (
                r[schema.DOMAIN],
                r[schema.CLASS_ID],
                r[schema.STYLE_ID],
                r[schema.CONTENT_ID],
                r[schema.INSTANCE_ID],
                cache.image_keys(r[schema.IMAGE]),
            ),  # fmt: skip
            num_parallel_calls=AUTOTUNE,
        ).batch(4096)
        groups: dict[tuple[int, int], list[int]] = {}
        sketches: dict[int, list[int]] = {}
        style_ids: dict[str, int] = {}
        for doms, cids, sids, conts, iids, keys in ds.as_numpy_iterator():
            for d, c, sid, cont, iid, k in zip(doms, cids, sids, conts, iids, keys, strict=True):
                d, c = d.decode(), int(c)
                if wanted is not None and c not in wanted:
                    continue
                if d == sketch_domain:
                    if sketch_dir is None:
                        sketches.setdefault(c, []).append(int(k))
                    continue
                if d not in style_of:
                    continue
                where = f"{self.dataset_dir}: record {iid.decode()!r} (domain {d!r})"
                if sid < 0 or cont < 0:
                    raise ValueError(
                        f"{where} has no style_id / content_id: style-aware SBIR needs "
                        "style-labelled records (prepare_data.py --source=style, "
                        "--source=synthetic --task=style, or --source=folders "
                        "--style_domains=...)"
                    )
                if cont != c:
                    raise ValueError(f"{where}: content_id {cont} differs from class_id {c}")
                if style_ids.setdefault(d, int(sid)) != sid:
                    raise ValueError(
                        f"{where}: style_id {sid}, but other {d!r} records have "
                        f"{style_ids[d]} (one style per domain expected)"
                    )
                groups.setdefault((c, style_of[d]), []).append(int(k))
        missing = [s for s in self.styles if s not in style_ids]
        if missing:
            raise ValueError(
                f"{self.dataset_dir}: no records of styles {missing} (has domains "
                f"{sorted(self.manifest['counts']['per_domain_class'])})"
            )
        self.sketch_dir = self.dataset_dir if sketch_dir is None else str(sketch_dir)
        if sketch_dir is None:
            self.sketch_manifest = self.manifest
            self.sketch_class_of = {c: c for c in sketches}
        else:
            self.sketch_manifest, self.sketch_class_of, sketches = _foreign_sketches(
                sketch_dir, sketch_domain, names, wanted, sketch_class_names
            )
        order = sorted(groups)
        self.groups = np.asarray(order, np.int64).reshape(-1, 2)
        self.group_keys = [np.asarray(groups[g], np.int64) for g in order]
        self.sketch_keys = {c: np.asarray(v, np.int64) for c, v in sorted(sketches.items())}

    def group_name(self, g: int) -> str:
        c, s = self.groups[g]
        return f"{self.classes[c]}/{self.styles[s]}"

    def triplet_tables(self, negative_rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Group-level sampling tables (never image combinations): (anchor logits [G],
        positive logits [G, G], negative logits [G, G]), 0 where allowed, -inf elsewhere.

        Positive group: the anchor's style, another content. Negative group: another style,
        and with `negative_rule="same_content"` the anchor's content.

        Raises:
          ValueError listing every group that cannot anchor a triplet and why.
        """
        if negative_rule not in STYLE_NEGATIVE_RULES:
            raise ValueError(
                f"negative_rule must be one of {STYLE_NEGATIVE_RULES}, got {negative_rule!r}"
            )
        c, s = self.groups[:, 0], self.groups[:, 1]
        pos = (s[:, None] == s[None, :]) & (c[:, None] != c[None, :])
        neg = s[:, None] != s[None, :]
        if negative_rule == "same_content":
            neg &= c[:, None] == c[None, :]
        has_sketch = np.array([len(self.sketch_keys.get(int(x), ())) > 0 for x in c], bool)
        problems = []
        for g in range(len(self.groups)):
            why = []
            if not pos[g].any():
                why.append(f"no other content class in style {self.styles[s[g]]!r} (positive)")
            if not neg[g].any():
                rule = " with the same content" if negative_rule == "same_content" else ""
                why.append(f"no other style{rule} (negative)")
            if not has_sketch[g]:
                why.append(f"no {self.sketch_domain!r} record of {self.classes[c[g]]!r}")
            if why:
                problems.append(f"{self.group_name(g)} ({len(self.group_keys[g])} images): "
                                + "; ".join(why))  # fmt: skip
        if problems or not len(self.groups):
            shown = "\n  ".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
            raise ValueError(
                f"{self.dataset_dir}: too few images to form style triplets "
                f"(rule {negative_rule!r}; {len(problems)} of {len(self.groups)} content x "
                f"style groups):\n  {shown or 'no style-labelled image'}"
            )
        as_logits = lambda m: np.where(m, 0.0, -np.inf).astype(np.float32)  # noqa: E731
        return np.zeros(len(self.groups), np.float32), as_logits(pos), as_logits(neg)


def sketch_classes_of(sketch_manifest, contents, wanted=None, sketch_class_names=None):
    """{content id: class id in a sketch dataset} for the sketch classes whose name (or alias
    in `sketch_class_names`) is a content name (`contents`, restricted to ids in `wanted`)."""
    aliases = dict(sketch_class_names or {})
    out = {}
    names = sketch_manifest["classes"]
    for sc, own in enumerate(names):
        name = aliases.get(own, own)
        if name in contents and (wanted is None or contents.index(name) in wanted):
            c = contents.index(name)
            if c in out:
                raise ValueError(
                    f"sketch classes {names[out[c]]!r} and {own!r} both map to content "
                    f"{name!r} (sketch_class_names {aliases})"
                )
            out[c] = sc
    return out


def _foreign_sketches(sketch_dir, sketch_domain, contents, wanted, sketch_class_names):
    """(manifest, {content: sketch class id}, {content: keys}) of the sketches of another
    record folder, matched to `contents` by name."""
    manifest = tfrecord.read_manifest(sketch_dir, kind=schema.KIND_LABELLED_IMAGE)
    class_of = sketch_classes_of(manifest, contents, wanted, sketch_class_names)
    if not class_of:
        raise ValueError(
            f"{sketch_dir}: no sketch class matches a content class (sketch classes "
            f"{manifest['classes'][:8]}..., contents {contents}); map names with "
            "sketch_class_names"
        )
    content_of = {sc: c for c, sc in class_of.items()}
    keys: dict[int, list[int]] = {}
    for (domain, cid), k in _keys_by_domain_class(sketch_dir, manifest).items():
        if domain == sketch_domain and cid in content_of:
            keys.setdefault(content_of[cid], []).extend(int(x) for x in k)
    return manifest, class_of, {c: np.asarray(v, np.int64) for c, v in sorted(keys.items())}


def _key_picker(key_lists: list[np.ndarray]):
    """A function (group index, seed) -> a key drawn uniformly from that group's keys."""
    counts = tf.constant([len(k) for k in key_lists], tf.int64)
    offsets = tf.constant(np.concatenate([[0], np.cumsum([len(k) for k in key_lists])[:-1]]),
                          tf.int64)  # fmt: skip
    flat = tf.constant(np.concatenate(key_lists) if key_lists else np.zeros([0], np.int64))

    def pick(g, seed):
        i = tf.random.stateless_uniform([], seed, 0, counts[g], dtype=tf.int64)
        return flat[offsets[g] + i]

    return pick


def style_triplet_batches(
    index: StyleIndex,
    batch_size: int,
    seed: int = 0,
    negative_rule: str = "same_content",
    output: str = "keys",
    image_size: int = 224,
    training: bool = False,
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """Endless batches for style-aware SBIR: per element a style triplet and a sketch.

    Element i (stateless seed ``[seed, i]``): an anchor image A of content c and style s (its
    group uniform over the (content, style) groups), a positive P of style s and another
    content, a negative N of another style (content c with `negative_rule="same_content"`,
    any content with "any"), and a sketch K of content c. Sampling works on the group tables
    of `StyleIndex.triplet_tables` and the groups' key lists, never on combinations of
    images; in "keys" mode an image is drawn uniformly (with replacement) from its group.

    Args:
      index: the records (`StyleIndex`).
      batch_size: GLOBAL batch size.
      output: "keys" (int64 cache keys only: for cached trunk features) or "images"
        (decoded, preprocessed images from per-group record streams, augmented when
        `training`).

    Returns:
      {"sketch", "anchor", "positive", "negative": [B, S, S, 3] float32} (or "<name>_key"
      [B] int64 with output="keys"), and [B] int64 labels "content_id", "style_id" (of A and
      K; P has style_id too), "positive_content_id", "negative_content_id",
      "negative_style_id".
    """
    if output not in TRIPLET_OUTPUTS:
        raise ValueError(f"output must be one of {TRIPLET_OUTPUTS}, got {output!r}")
    anchor_logits, pos_logits, neg_logits = index.triplet_tables(negative_rule)
    n_groups = len(index.groups)
    pos_t, neg_t = tf.constant(pos_logits), tf.constant(neg_logits)
    groups_t = tf.constant(index.groups)
    contents = sorted(index.sketch_keys)
    sketch_slot = np.full(len(index.classes), -1, np.int64)
    sketch_slot[contents] = np.arange(len(contents))
    sketch_slot_t = tf.constant(sketch_slot)

    def choose(s):
        s4 = tf.random.experimental.stateless_split(s, 4)
        a = tf.random.stateless_uniform([], s4[0], 0, n_groups, dtype=tf.int64)
        p = tf.random.stateless_categorical(pos_t[a][None], 1, s4[1], dtype=tf.int64)[0, 0]
        n = tf.random.stateless_categorical(neg_t[a][None], 1, s4[2], dtype=tf.int64)[0, 0]
        return a, p, n, s4[3]

    picks = _seeds(seed).map(choose)

    def labels(a, p, n):
        ga, gp, gn = groups_t[a], groups_t[p], groups_t[n]
        return {
            "content_id": ga[0], "style_id": ga[1], "positive_content_id": gp[0],
            "negative_content_id": gn[0], "negative_style_id": gn[1],
        }  # fmt: skip

    if output == "keys":
        gallery = _key_picker(index.group_keys)
        sketch = _key_picker([index.sketch_keys[c] for c in contents])

        def keys(a, p, n, s):
            s4 = tf.random.experimental.stateless_split(s, 4)
            return {
                "anchor_key": gallery(a, s4[0]), "positive_key": gallery(p, s4[1]),
                "negative_key": gallery(n, s4[2]),
                "sketch_key": sketch(sketch_slot_t[groups_t[a][0]], s4[3]), **labels(a, p, n),
            }  # fmt: skip

        ds = picks.map(keys, num_parallel_calls=AUTOTUNE)
        return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE).with_options(_options())

    def group_streams(offset):
        return [
            _class_domain_stream(index.dataset_dir, index.manifest, int(c), index.styles[int(st)],
                                 seed + offset + 7919 * (g + 1), shuffle_buffer)
            for g, (c, st) in enumerate(index.groups)
        ]  # fmt: skip

    sketch_streams = [
        _class_domain_stream(index.sketch_dir, index.sketch_manifest, index.sketch_class_of[c],
                             index.sketch_domain, seed + 53 + 7919 * (i + 1), shuffle_buffer)
        for i, c in enumerate(contents)
    ]  # fmt: skip
    a_ds = tf.data.Dataset.choose_from_datasets(group_streams(11), picks.map(lambda a, p, n, s: a))
    p_ds = tf.data.Dataset.choose_from_datasets(group_streams(23), picks.map(lambda a, p, n, s: p))
    n_ds = tf.data.Dataset.choose_from_datasets(group_streams(37), picks.map(lambda a, p, n, s: n))
    k_ds = tf.data.Dataset.choose_from_datasets(
        sketch_streams, picks.map(lambda a, p, n, s: sketch_slot_t[groups_t[a][0]])
    )

    def prep(k_rec, a_rec, p_rec, n_rec, pick):
        a, p, n, s = pick
        s4 = tf.random.experimental.stateless_split(s, 4)
        out = labels(a, p, n)
        for i, (name, rec) in enumerate(
            (("sketch", k_rec), ("anchor", a_rec), ("positive", p_rec), ("negative", n_rec))
        ):
            image = schema.parse_labelled_image(rec)[schema.IMAGE]
            out[name] = preprocess(image, name == "sketch", image_size, training, s4[i])
        return out

    ds = tf.data.Dataset.zip((k_ds, a_ds, p_ds, n_ds, picks)).map(prep, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE).with_options(_options())


# ---- correspondence pairs ---------------------------------------------------------------------
def sample_points(points_a, points_b, point_ids, num_points: int, seed):
    """Pick `num_points` of N corresponding points (without replacement), padding if N is less.

    Args:
      points_a, points_b: float32 [N, 2]; point_ids: int64 [N]; seed: int [2].

    Returns:
      (points_a [M, 2], points_b [M, 2], point_ids [M] (-1 where padded), mask [M] bool)
      with M = num_points; padded rows are zeros.
    """
    n = tf.shape(point_ids)[0]
    order = tf.argsort(tf.random.stateless_uniform([n], seed))[:num_points]
    m = tf.shape(order)[0]
    pad = num_points - m

    def take(x, fill):
        y = tf.gather(x, order)
        paddings = [[0, pad]] + [[0, 0]] * (len(x.shape) - 1)
        return tf.pad(y, paddings, constant_values=fill)

    pa = tf.ensure_shape(take(points_a, 0.0), [num_points, 2])
    pb = tf.ensure_shape(take(points_b, 0.0), [num_points, 2])
    ids = tf.ensure_shape(take(point_ids, tf.constant(-1, point_ids.dtype)), [num_points])
    mask = tf.ensure_shape(tf.range(num_points) < m, [num_points])
    return pa, pb, ids, mask


def correspondence_batches(
    dataset_dir,
    batch_size: int,
    num_points: int = 32,
    image_size: int = 512,
    seed: int = 0,
    training: bool = True,
    shuffle_buffer: int = 256,
    category_ids=None,
    shards: list[dict] | None = None,
) -> tf.data.Dataset:
    """Batches of correspondence pairs with a fixed number of points per pair.

    Images are decoded, made 3-channel and resized to [S, S] (keeping aspect, white pad);
    points are mapped into the resized frame. `category_ids` (optional list of int) keeps the
    records of those categories only, dropped before anything is decoded. `shards` (optional
    manifest shard entries) reads those shards only (one worker's share of the input).

    Returns:
      dict {"image_a", "image_b": [B,S,S,3] float32, "points_a", "points_b": [B,M,2] float32
      pixels, "point_ids": [B,M] int64 (-1 padded), "mask": [B,M] bool, "category_id": [B]}.
      Training: endless and shuffled; otherwise one pass, last batch kept.
    """
    manifest = tfrecord.read_manifest(dataset_dir, kind=schema.KIND_CORRESPONDENCE_PAIR)
    ds = tfrecord.record_dataset(
        dataset_dir, shards=shards, shuffle_shards=training, seed=seed, manifest=manifest
    )
    if training:
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed)

    def fit(encoded, pts):
        img, scale, offset = resize_pad_geometry(decode_image(encoded), image_size, 1.0)
        return img, pts * scale + offset

    ds = ds.map(schema.parse_correspondence_pair, num_parallel_calls=AUTOTUNE)
    if category_ids is not None:
        keep = tf.constant(list(category_ids) or [-1], tf.int64)
        ds = ds.filter(
            lambda r: tf.reduce_any(tf.equal(tf.cast(r[schema.CATEGORY_ID], tf.int64), keep))
        )

    def prep(r, s):
        img_a, pa = fit(r[schema.IMAGE_A], r[schema.POINTS_A])
        img_b, pb = fit(r[schema.IMAGE_B], r[schema.POINTS_B])
        pa, pb, ids, mask = sample_points(pa, pb, r[schema.POINT_IDS], num_points, s)
        return {
            "image_a": img_a,
            "image_b": img_b,
            "points_a": pa,
            "points_b": pb,
            "point_ids": ids,
            "mask": mask,
            "category_id": r[schema.CATEGORY_ID],
        }

    ds = tf.data.Dataset.zip((ds, _seeds(seed))).map(prep, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE).with_options(_options())


def correspondence_triplets(
    dataset_dir,
    num_candidates: int = 5,
    image_size: int = 512,
    seed: int = 0,
    classes=None,
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """Endless, unbatched SketchZooms triplets as the original draws them (`utils/SZDataset.py`):
    one corresponding point seen in drawing A (anchor) and drawing B (positive) of a record,
    and `num_candidates` negative candidates, each a point of drawing B of another random
    record *of the same category* (the original tries up to 5 and keeps the first semi-hard
    one; that choice needs the model and is made in the loss).

    A record's category is drawn in proportion to its record count (the original walks its
    shuffled CSV), then the record from that category's shuffled stream; negatives come from
    a second, independently shuffled stream of the same category. Records with several
    points (the synthetic world) contribute one random point per draw. Images are resized to
    `image_size` (aspect kept, white pad) and points mapped with them.

    Returns:
      dict {"image_a", "image_b": [S, S, 3] float32, "point_a", "point_b": [2] float32 (x, y),
      "neg_images": [C, S, S, 3], "neg_points": [C, 2], "category_id": int64 [],
      "neg_category_ids": int64 [C]}, C = `num_candidates`.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    manifest = tfrecord.read_manifest(dataset_dir, kind=schema.KIND_CORRESPONDENCE_PAIR)
    ids = _check_classes(manifest, classes, [], dataset_dir)
    per_class = manifest["counts"]["per_class"]
    names = manifest["classes"]
    counts = np.array([per_class.get(names[i], 0) for i in ids], np.float64)
    if not counts.sum():
        raise ValueError(f"{dataset_dir}: no records of classes {[names[i] for i in ids]}")
    logits = tf.constant(np.log(np.maximum(counts, 1e-30))[None], tf.float32)

    def streams(offset):
        return [
            _class_domain_stream(
                dataset_dir, manifest, c, None, seed + offset + 7919 * (i + 1), shuffle_buffer
            )
            for i, c in enumerate(ids)
        ]

    category = _seeds(seed + 1).map(
        lambda s: tf.random.stateless_categorical(logits, 1, s, dtype=tf.int64)[0, 0]
    )
    anchors = tf.data.Dataset.choose_from_datasets(streams(11), category)
    negatives = tf.data.Dataset.choose_from_datasets(
        streams(23),
        category.flat_map(lambda c: tf.data.Dataset.from_tensors(c).repeat(num_candidates)),
    ).batch(num_candidates, drop_remainder=True)

    def fit(encoded, pts):
        img, scale, offset = resize_pad_geometry(decode_image(encoded), image_size, 1.0)
        return img, pts * scale + offset

    def one_point(rec, s, sides):
        r = schema.parse_correspondence_pair(rec)
        n = tf.shape(r[schema.POINT_IDS])[0]
        j = tf.random.stateless_uniform([], s, 0, tf.maximum(n, 1), dtype=tf.int32)
        out = []
        for image_key, points_key in sides:
            img, pts = fit(r[image_key], r[points_key])
            out += [img, pts[j]]
        return out + [r[schema.CATEGORY_ID]]

    def prep(anchor, candidates, cat, s):
        s2 = tf.random.experimental.stateless_split(s, num_candidates + 1)
        img_a, pt_a, img_b, pt_b, cat_id = one_point(
            anchor, s2[0], [(schema.IMAGE_A, schema.POINTS_A), (schema.IMAGE_B, schema.POINTS_B)]
        )
        negs = [
            one_point(candidates[i], s2[i + 1], [(schema.IMAGE_B, schema.POINTS_B)])
            for i in range(num_candidates)
        ]
        return {
            "image_a": img_a,
            "point_a": pt_a,
            "image_b": img_b,
            "point_b": pt_b,
            "neg_images": tf.stack([x[0] for x in negs]),
            "neg_points": tf.stack([x[1] for x in negs]),
            "category_id": cat_id,
            "neg_category_ids": tf.stack([x[2] for x in negs]),
        }

    ds = tf.data.Dataset.zip((anchors, negatives, category, _seeds(seed)))
    return ds.map(prep, num_parallel_calls=AUTOTUNE).with_options(_options())
