"""In-graph extraction of SketchZooms "zoom" views around points of a sketch.

For every point of every image K square windows ("zooms") centred on the point are sampled
and resized to `view_size` x `view_size`, all in one vectorised graph (no per-point Python
loop), so the op runs inside `tf.data` and inside a training step.

Coordinate convention (used by every function here): points are float (x, y) in pixels,
x to the right, y down, with the origin at the *top-left corner* of pixel (0, 0); pixel
centres therefore sit at (i + 0.5, j + 0.5). A window of half-size h around (x, y) covers
the continuous square [x - h, x + h] x [y - h, y + h]. Integer points of the original
SketchZooms code (which crops `img[y - h : y + h, x - h : x + h]`) give the same window.

Sampling is bilinear at the output pixel centres (the OpenCV / "half-pixel" resize
convention), on the image embedded in an infinite white (1.0) plane. Without anti-aliasing
(the original's behaviour) a 360 px window sampled at 32 px reads one source pixel in ~11 and
thin strokes flicker in and out of the view; `zoom_views(..., antialias=True)` first
area-averages the image per zoom level (`area_shrink`) so each view pixel integrates its
footprint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from sketch_tf.core import kernels

#: Zoom factors of the original model (largest window first).
DEFAULT_ZOOMS = (1.8, 1.3, 0.8)


def _check_inputs(images, points, zooms, view_size, reference_size, base_half_size):
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(
            f"zoom_views: `images` must be float32 [B, H, W, 3], got shape {images.shape}"
        )
    if images.shape.rank == 4 and images.shape[-1] not in (None, 3):
        raise ValueError(
            f"zoom_views: `images` must have 3 channels (RGB), got shape {images.shape}"
        )
    if points.shape.rank is not None and (
        points.shape.rank != 3 or points.shape[-1] not in (None, 2)
    ):
        raise ValueError(
            f"zoom_views: `points` must be float32 [B, N, 2] as (x, y) pixels, got {points.shape}"
        )
    if len(zooms) == 0 or any(float(z) <= 0 for z in zooms):
        raise ValueError(
            f"zoom_views: `zooms` must be a non-empty list of positive floats, got {zooms}"
        )
    if int(view_size) < 1:
        raise ValueError(f"zoom_views: `view_size` must be >= 1, got {view_size}")
    if float(reference_size) <= 0 or float(base_half_size) <= 0:
        raise ValueError(
            "zoom_views: `reference_size` and `base_half_size` must be > 0, got "
            f"{reference_size} and {base_half_size}"
        )


def _draw_per_point(seed, batch, num, scale_jitter, max_rotation_deg, flip_prob):
    """Per-point jitter u [B,N], angle in radians [B,N] and flip sign [B,N] (+1 / -1)."""
    shape = tf.stack([batch, num])
    zeros = tf.zeros(shape, tf.float32)
    if scale_jitter == 0.0 and max_rotation_deg == 0.0 and flip_prob == 0.0:
        return zeros, zeros, tf.ones(shape, tf.float32)
    if seed is None:
        # No seed given: draw one from the global generator (not reproducible unless the
        # global TF seed is set). Pass `seed` for deterministic pipelines.
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    u = tf.random.stateless_uniform(shape, seeds[0], -scale_jitter, scale_jitter)
    max_rad = max_rotation_deg * math.pi / 180.0
    angle = tf.random.stateless_uniform(shape, seeds[1], -max_rad, max_rad)
    flip = tf.random.stateless_uniform(shape, seeds[2]) < flip_prob
    sign = tf.where(flip, -1.0, 1.0)
    if scale_jitter == 0.0:
        u = zeros
    if max_rotation_deg == 0.0:
        angle = zeros
    return u, angle, sign


def _pad_white(images):
    """Adds a 1-pixel white border so bilinear samples blend into white outside the image."""
    return tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.0)


def _views_crop_and_resize(images, points, half, sign, view_size):
    """Axis-aligned views (flip allowed, no rotation) with tf.image.crop_and_resize.

    images [B,H,W,3]; points [B,N,2]; half [B,N,K] (px); sign [B,N] -> [B,N,K,S,S,3].
    """
    s = view_size
    padded = _pad_white(images)
    hp = tf.cast(tf.shape(padded)[1], tf.float32)
    wp = tf.cast(tf.shape(padded)[2], tf.float32)
    b = tf.shape(points)[0]
    n = tf.shape(points)[1]
    k = tf.shape(half)[2]
    # Sample positions in padded pixel-index coordinates: the first / last output pixel centre
    # sit at offsets +-h(1 - 1/S) from the point; "-0.5" turns continuous coordinates into
    # pixel indices and "+1" accounts for the white border.
    x = points[..., 0][..., None] + 0.5
    y = points[..., 1][..., None] + 0.5
    reach = half * (1.0 - 1.0 / s)
    sx = sign[..., None]
    x1 = (x - sx * reach) / (wp - 1.0)
    x2 = (x + sx * reach) / (wp - 1.0)
    y1 = (y - reach) / (hp - 1.0)
    y2 = (y + reach) / (hp - 1.0)
    boxes = tf.reshape(tf.stack([y1, x1, y2, x2], axis=-1), [-1, 4])
    box_ind = tf.repeat(tf.range(b), n * k)
    crops = tf.image.crop_and_resize(
        padded, boxes, box_ind, [s, s], method="bilinear", extrapolation_value=1.0
    )
    return tf.reshape(crops, tf.stack([b, n, k, s, s, 3]))


def _views_gather(images, points, half, angle, sign, view_size):
    """General views (rotation + flip) with a gather-based bilinear sampler.

    View offset q (x right, y down, from the point) maps to image offset
    p = F R(-angle) q: the view shows the neighbourhood rotated counter-clockwise by `angle`
    as displayed (like PIL `Image.rotate(angle)`) after an optional horizontal flip (F).
    """
    s = view_size
    padded = _pad_white(images)
    hp = tf.shape(padded)[1]
    wp = tf.shape(padded)[2]
    b = tf.shape(points)[0]
    n = tf.shape(points)[1]
    k = tf.shape(half)[2]
    g = (2.0 * tf.range(s, dtype=tf.float32) + 1.0) / s - 1.0  # [S] in (-1, 1)
    h = half[..., None, None]  # [B,N,K,1,1]
    qx = h * g[None, :]  # [B,N,K,1,S]  (column j)
    qy = h * g[:, None]  # [B,N,K,S,1]  (row i)
    c = tf.cos(angle)[..., None, None, None]
    sn = tf.sin(angle)[..., None, None, None]
    sx = sign[..., None, None, None]
    px = sx * (c * qx - sn * qy)  # [B,N,K,S,S]
    py = sn * qx + c * qy
    # Continuous -> padded pixel-index coordinates.
    xs = points[..., 0][..., None, None, None] + px + 0.5
    ys = points[..., 1][..., None, None, None] + py + 0.5
    wmax = tf.cast(wp - 1, tf.float32)
    hmax = tf.cast(hp - 1, tf.float32)
    # Clamping into the padded range is exact: beyond it everything is white anyway.
    xs = tf.clip_by_value(xs, 0.0, wmax)
    ys = tf.clip_by_value(ys, 0.0, hmax)
    x0f = tf.floor(xs)
    y0f = tf.floor(ys)
    wx = (xs - x0f)[..., None]
    wy = (ys - y0f)[..., None]
    x0 = tf.cast(x0f, tf.int32)
    y0 = tf.cast(y0f, tf.int32)
    x1 = tf.minimum(x0 + 1, wp - 1)
    y1 = tf.minimum(y0 + 1, hp - 1)
    flat = tf.reshape(padded, tf.stack([b, hp * wp, 3]))

    def gather(yy, xx):
        idx = tf.reshape(yy * wp + xx, tf.stack([b, -1]))
        vals = tf.gather(flat, idx, batch_dims=1)
        return tf.reshape(vals, tf.stack([b, n, k, s, s, 3]))

    top = gather(y0, x0) * (1.0 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1.0 - wx) + gather(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


# XLA fuses the coordinate arithmetic, the four gathers and the bilinear blend of
# `_views_gather` into one loop over the output pixels: 8.8x faster on CPU for 192 rotated
# views of 224 px (499 -> 56 ms), 6.3x for a zooms training batch (16 x 32 points x 3 views of
# 32 px: 81 -> 13 ms), values equal to ~7e-5 (fused multiply-adds move a few sample positions
# by an ulp). Like `_minmax_stretch_xla` it runs eagerly, in tf.function and in tf.data maps.
_views_gather_xla = tf.function(_views_gather, jit_compile=True, reduce_retracing=True)


def _views_axis_xla(images, points, half, sign, view_size):
    """Unrotated views (`_views_crop_and_resize`'s arguments) by the XLA gather sampler."""
    zeros = tf.zeros(tf.shape(points)[:2], tf.float32)
    return _views_gather_xla(images, points, half, zeros, sign, view_size)


#: Views per representative call of the samplers and the stretch: a fixed number of view
#: pixels, the 1,536 views of 32 px of a zooms training batch (16 pairs x 32 points x 3 zooms).
_EXAMPLE_VIEW_PIXELS = 1536 * 32 * 32


def _views_example(view_size: int, rotated: bool) -> tuple:
    """Arguments of a representative sampler call for views of `view_size` px: 4 drawings of
    256 px, enough points for `_EXAMPLE_VIEW_PIXELS`, 3 zooms of 20-90 px half-size."""
    b, k = 4, 3
    n = max(1, _EXAMPLE_VIEW_PIXELS // (view_size * view_size * k * b))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(b, 256, 256, 3)).astype(np.float32))
    points = tf.constant(rng.uniform(0, 256, (b, n, 2)).astype(np.float32))
    half = tf.constant(rng.uniform(20, 90, (b, n, k)).astype(np.float32))
    sign = tf.constant(np.where(rng.random((b, n)) < 0.5, -1.0, 1.0).astype(np.float32))
    if not rotated:
        return images, points, half, sign, view_size
    angles = tf.constant(rng.uniform(-0.8, 0.8, (b, n)).astype(np.float32))
    return images, points, half, angles, sign, view_size


#: The zoom sampler without rotation (XLA gather vs `tf.image.crop_and_resize`) and with it
#: (XLA vs plain-ops gather), keyed by the view side: chosen per machine
#: (`sketch_tf.core.kernels`; e.g. crop_and_resize wins at 32 px under an AVX2 cap, XLA at 224).
VIEWS = kernels.DualKernel(
    "zoom_views", _views_axis_xla, _views_crop_and_resize,
    lambda s: _views_example(s, rotated=False), 224,
)  # fmt: skip
VIEWS_ROTATED = kernels.DualKernel(
    "zoom_views_rotated", _views_gather_xla, _views_gather,
    lambda s: _views_example(s, rotated=True), 224,
)  # fmt: skip


def sample_views(
    images, points, half_sizes, *, angles=None, flip=None, view_size: int = 224, method="auto"
) -> tf.Tensor:
    """Samples square views with explicit geometry (no randomness, no stretch).

    Args:
      images: float32 [B, H, W, 3] in [0, 1].
      points: float32 [B, N, 2] (x, y) pixels (module docstring convention).
      half_sizes: float32 [B, N, K] half-side of each view in pixels.
      angles: optional float32 [B, N] rotation in radians (counter-clockwise as displayed).
      flip: optional bool [B, N] horizontal flip about the point (applied before rotation).
      view_size: S, output side in pixels.
      method: "auto" (the faster on this machine, `VIEWS` without `angles`, else
        `VIEWS_ROTATED`), "gather" (the gather sampler, XLA-compiled or not per machine:
        `VIEWS_ROTATED`) or "crop_and_resize" (`tf.image.crop_and_resize`; no rotation).

    Returns:
      float32 [B, N, K, S, S, 3], bilinear samples at the output pixel centres, white (1.0)
      outside the image.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    points = tf.convert_to_tensor(points, tf.float32)
    half_sizes = tf.convert_to_tensor(half_sizes, tf.float32)
    shape = tf.shape(points)[:2]
    sign = tf.ones(shape) if flip is None else tf.where(tf.convert_to_tensor(flip), -1.0, 1.0)
    if method == "crop_and_resize" and angles is not None:
        raise ValueError("sample_views: method='crop_and_resize' cannot rotate; use 'gather'")
    s = int(view_size)
    if method == "crop_and_resize":
        return _views_crop_and_resize(images, points, half_sizes, sign, s)
    if method == "auto" and angles is None:
        return VIEWS.pick(s)(images, points, half_sizes, sign, s)
    angles = tf.zeros(shape) if angles is None else tf.convert_to_tensor(angles, tf.float32)
    return VIEWS_ROTATED.pick(s)(images, points, half_sizes, angles, sign, s)


def area_shrink(images, factor) -> tf.Tensor:
    """Area-averages `images` by an integer `factor` (box filter + decimation).

    images: float32 [B, H, W, C]; factor: int scalar (Python or tensor) >= 1. The image is
    padded with white (1.0) at the bottom / right to a multiple of `factor`, then each
    factor x factor block is averaged: output pixel (i, j) covers source pixels
    [i f, (i + 1) f) x [j f, (j + 1) f), so a continuous point p maps to p / f exactly (corner
    origin convention). Returns float32 [B, ceil(H / f), ceil(W / f), C]. XLA-compiled or
    plain TF ops, whichever is faster on this machine (`AREA_SHRINK`).
    """
    return AREA_SHRINK.pick()(tf.convert_to_tensor(images, tf.float32), factor)


def _area_shrink_ops(images, factor) -> tf.Tensor:
    """The computation of `area_shrink` (both of its implementations)."""
    f = tf.maximum(tf.cast(factor, tf.int32), 1)
    shape = tf.shape(images)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    hs, ws = (h + f - 1) // f, (w + f - 1) // f
    padded = tf.pad(images, [[0, 0], [0, hs * f - h], [0, ws * f - w], [0, 0]], constant_values=1.0)
    blocks = tf.reshape(padded, tf.stack([b, hs, f, ws, f, c]))
    return tf.reduce_mean(blocks, axis=[2, 4])


def minmax_stretch(views: tf.Tensor) -> tf.Tensor:
    """Per-view, per-channel min-max stretch to [0, 1].

    views: float32 [..., S, S, C] with values in [0, 1]. A channel that is constant over the
    view is left unchanged (no division by zero, no NaN). Returns the same shape and dtype,
    values clipped to [0, 1]. XLA-compiled or plain TF ops, whichever is faster on this
    machine (`MINMAX_STRETCH`, keyed by the view side S).
    """
    views = tf.convert_to_tensor(views)
    return MINMAX_STRETCH.pick(views.shape[-2])(views)


def _minmax_stretch_ops(views: tf.Tensor) -> tf.Tensor:
    """The computation of `minmax_stretch` (both of its implementations)."""
    shape = tf.shape(views)
    h, w, c = shape[-3], shape[-2], shape[-1]
    # Two-stage reductions (rows of [M, H, W*C], then columns of [M, W, C]): TF's CPU kernels
    # reduce an inner-but-not-last axis of a [M, H*W, C] tensor about 10x slower than this.
    rows = tf.reshape(views, tf.stack([-1, h, w * c]))
    hi = tf.reduce_max(tf.reshape(tf.reduce_max(rows, 1), tf.stack([-1, w, c])), 1)
    lo = tf.reduce_min(tf.reshape(tf.reduce_min(rows, 1), tf.stack([-1, w, c])), 1)
    rng = hi - lo
    ok = rng > 0
    # One multiply-add over the views; constant channels get scale 1, offset 0 (unchanged).
    scale = tf.where(ok, 1.0 / tf.where(ok, rng, tf.ones_like(rng)), tf.ones_like(rng))
    offset = tf.where(ok, -lo * scale, tf.zeros_like(rng))
    flat = tf.reshape(views, tf.stack([-1, h * w, c]))
    out = flat * scale[:, None, :] + offset[:, None, :]
    # The multiply-add can overshoot by one ulp; inputs are in [0, 1], so clipping is exact.
    return tf.reshape(tf.clip_by_value(out, 0.0, 1.0), shape)


def zoom_views(
    images,
    points,
    *,
    zooms: Sequence[float] = DEFAULT_ZOOMS,
    base_half_size: float = 100.0,
    reference_size: float = 512,
    view_size: int = 224,
    scale_jitter: float = 0.0,
    max_rotation_deg: float = 0.0,
    flip_prob: float = 0.0,
    seed=None,
    method: str = "auto",
    stretch: bool = True,
    antialias: bool = False,
) -> tf.Tensor:
    """Extracts K zoom views per point, vectorised over images, points and zooms.

    Args:
      images: float32 [B, H, W, 3], values in [0, 1] (white paper = 1.0).
      points: float32 [B, N, 2], (x, y) in pixels, origin at the top-left corner of pixel
        (0, 0) (pixel centres at +0.5; see the module docstring).
      zooms: K zoom factors z_k. The half-size of view k of a point is
        `base_half_size * (z_k - u) * H / reference_size` pixels, with u ~ U(-scale_jitter,
        scale_jitter) drawn once per point (shared by its K views). With the defaults a
        512-px sketch gets windows of 360, 260 and 160 px side.
      base_half_size: half-size in pixels for z = 1 on an image of `reference_size` rows.
      reference_size: image height (px) at which `base_half_size` applies; windows scale
        with the actual height H so the same part of the drawing is seen at any resolution.
      view_size: S, output side in pixels.
      scale_jitter: j >= 0 of the uniform zoom jitter (0.3 when training the original).
      max_rotation_deg: one rotation angle per point, uniform in [-max, max] degrees,
        shared by its K views; positive angles turn the content counter-clockwise as
        displayed (PIL `Image.rotate` convention), about the point.
      flip_prob: probability of one horizontal flip (about the point) per point, shared by
        its K views; the flip is applied before the rotation.
      seed: int [2] tensor / tuple for the stateless random draws (deterministic in
        `tf.data` and training). None with any augmentation on draws a seed from the global
        generator.
      method: "auto" (the faster sampler on this machine: `VIEWS` without rotation,
        `VIEWS_ROTATED` with it), "gather" (the gather sampler, the only one that rotates,
        XLA-compiled or not per machine) or "crop_and_resize" (raises if rotation is
        requested).
      stretch: apply the per-view, per-channel min-max stretch to [0, 1] (the original
        preprocessing; constant channels are left unchanged).
      antialias: area-average the image before sampling each zoom level k, by the integer
        factor floor(2 * nominal half-size_k / view_size) (>= 1; jitter not included), so a
        view pixel covers about one pixel of the shrunk image instead of skipping source
        pixels. False reproduces the original (aliased) sampling.

    Returns:
      float32 [B, N, K, S, S, 3] views, row-major (y down) like the images.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    points = tf.convert_to_tensor(points, tf.float32)
    zooms = tuple(float(z) for z in zooms)
    _check_inputs(images, points, zooms, view_size, reference_size, base_half_size)
    if scale_jitter < 0 or max_rotation_deg < 0 or not 0.0 <= flip_prob <= 1.0:
        raise ValueError(
            "zoom_views: need scale_jitter >= 0, max_rotation_deg >= 0 and 0 <= flip_prob <= 1, "
            f"got {scale_jitter}, {max_rotation_deg}, {flip_prob}"
        )
    if scale_jitter >= min(zooms):
        raise ValueError(
            f"zoom_views: scale_jitter={scale_jitter} must be smaller than the smallest zoom "
            f"{min(zooms)} (a window would have non-positive size)"
        )
    if method not in ("auto", "gather", "crop_and_resize"):
        raise ValueError(f"zoom_views: unknown method {method!r}")
    if method == "crop_and_resize" and max_rotation_deg > 0:
        raise ValueError("zoom_views: method='crop_and_resize' cannot rotate; use 'gather'")
    view_size = int(view_size)
    b = tf.shape(points)[0]
    n = tf.shape(points)[1]
    u, angle, sign = _draw_per_point(
        seed, b, n, float(scale_jitter), float(max_rotation_deg), float(flip_prob)
    )
    height = tf.cast(tf.shape(images)[1], tf.float32)
    z = tf.constant(zooms, tf.float32)
    half = base_half_size * (z[None, None, :] - u[..., None]) * (height / float(reference_size))
    sample = dict(
        angles=angle if max_rotation_deg > 0 else None,
        flip=sign < 0,
        view_size=view_size,
        method=method,
    )
    if not antialias:
        views = sample_views(images, points, half, **sample)
    else:
        per_zoom = []
        for k, zk in enumerate(zooms):
            # Nominal source pixels per view pixel of this zoom level (jitter excluded, so
            # one shrunk image serves every point of the batch).
            ratio = 2.0 * base_half_size * zk * (height / float(reference_size)) / view_size
            factor = tf.maximum(tf.cast(tf.floor(ratio), tf.int32), 1)
            f = tf.cast(factor, tf.float32)
            shrunk = area_shrink(images, factor)
            per_zoom.append(sample_views(shrunk, points / f, half[..., k : k + 1] / f, **sample))
        views = tf.concat(per_zoom, axis=2)
    return minmax_stretch(views) if stretch else views


# XLA turns the reshape + mean of `area_shrink` into one pass (4-5x faster on a zooms training
# batch of 16 x 256 px drawings); `factor` is a compile-time constant, one compilation per
# factor (a zoom level).
_area_shrink_xla = tf.function(_area_shrink_ops, jit_compile=True, reduce_retracing=True)

# XLA fuses the two reductions and the multiply-add of `minmax_stretch` into ~2 passes over the
# views (~3x faster on CPU at 224 px, same values to ~3e-7); works eagerly, inside tf.function,
# in a training step and inside `tf.data` maps.
_minmax_stretch_xla = tf.function(_minmax_stretch_ops, jit_compile=True, reduce_retracing=True)


def _area_shrink_example(factor: int) -> tuple:
    """A zooms training batch's drawings: 16 of 256 px, shrunk by `factor`."""
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(size=(16, 256, 256, 3)).astype(np.float32)), factor


def _minmax_example(view_size: int) -> tuple:
    """`_EXAMPLE_VIEW_PIXELS` of views of `view_size` px."""
    n = max(1, _EXAMPLE_VIEW_PIXELS // (view_size * view_size))
    rng = np.random.default_rng(0)
    return (tf.constant(rng.uniform(size=(n, view_size, view_size, 3)).astype(np.float32)),)


#: The area shrink (keyed by a representative factor: its factor is a tensor) and the min-max
#: stretch (keyed by the view side), each XLA-compiled or plain per machine.
AREA_SHRINK = kernels.DualKernel(
    "area_shrink", _area_shrink_xla, _area_shrink_ops, _area_shrink_example, 4
)
MINMAX_STRETCH = kernels.DualKernel(
    "minmax_stretch", _minmax_stretch_xla, _minmax_stretch_ops, _minmax_example, 224
)
