"""SavedModel signatures of the SketchZooms family and their warmup inputs.

- `serving_default` (describe): `image` (encoded drawing, any size) + `points` float32
  [N, 2] (x, y) pixels of that image -> `descriptors` float32 [N, D].
- `dense`: `image` + `stride` int32 -> `points` [P, 2] (input-image pixels) on a grid inside
  the dilated ink mask, `descriptors` [P, D], `num_points` (P <= serving.max_dense_points).

Points use the pixel-corner convention of `sketch_tf.data.zooms`. Images go through the
serving input layer (`sketch_tf.export.inputs`): resized to `data.image_size` as in
evaluation, malformed bytes give InvalidArgument naming the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data.images import encode_png
from sketch_tf.export import inputs
from sketch_tf.models.zooms import describe_graph


def dense_points(image, stride, cap: int, dilate_px: int, ink_threshold: float):
    """Grid points at `stride` inside the dilated ink mask of `image` [S, S, 3] (graph op).

    Grid nodes sit at pixel centres `stride // 2 + i * stride` (+0.5 in the corner convention);
    a node is kept when some ink pixel (ink = 1 - mean channel > `ink_threshold`) lies within
    `dilate_px` (square neighbourhood). More than `cap` nodes are thinned to `cap` evenly spaced
    ones (row-major order). Returns float32 [P, 2] (x, y), P <= cap.
    """
    ink = tf.cast(1.0 - tf.reduce_mean(image, -1) > ink_threshold, tf.float32)
    width = 2 * int(dilate_px) + 1
    mask = tf.nn.max_pool2d(ink[None, :, :, None], width, 1, "SAME")[0, :, :, 0] > 0
    stride = tf.maximum(tf.cast(stride, tf.int32), 1)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ys = tf.range(stride // 2, h, stride)
    xs = tf.range(stride // 2, w, stride)
    gy, gx = tf.meshgrid(ys, xs, indexing="ij")
    grid = tf.reshape(tf.stack([gy, gx], -1), [-1, 2])
    keep = tf.gather_nd(mask, grid)
    yx = tf.boolean_mask(grid, keep)
    n = tf.shape(yx)[0]
    idx = tf.cast(
        tf.floor(tf.range(cap, dtype=tf.float32) * tf.cast(n, tf.float32) / cap), tf.int32
    )
    yx = tf.cond(n > cap, lambda: tf.gather(yx, idx), lambda: yx)
    return tf.cast(tf.reverse(yx, [1]), tf.float32) + 0.5


def serving_signatures(task, model) -> dict[str, Any]:
    """`serving_default` = describe and `dense` (see the module docstring)."""
    cfg = task.config
    size = int(cfg.data.image_size)
    kw = task.zoom_kwargs(training=False)
    chunk = int(cfg.serving.chunk_points)
    cap = int(cfg.serving.max_dense_points)

    def descriptors(img, pts):
        return describe_graph(model, img[None], pts[None], kw, chunk)[0]

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.string, name="image"),
            tf.TensorSpec([None, 2], tf.float32, name="points"),
        ]
    )
    def describe(image, points):
        img, scale, offset = inputs.drawing_with_geometry(image, "image", size)
        return {"descriptors": descriptors(img, points * scale + offset)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.string, name="image"),
            tf.TensorSpec([], tf.int32, name="stride"),
        ]
    )
    def dense(image, stride):
        img, scale, offset = inputs.drawing_with_geometry(image, "image", size)
        pts = dense_points(
            img, stride, cap, int(cfg.serving.dilate_px), float(cfg.serving.ink_threshold)
        )
        return {
            "points": (pts - offset) / scale,
            "descriptors": descriptors(img, pts),
            "num_points": tf.shape(pts)[0],
        }

    return {
        "serving_default": describe.get_concrete_function(),
        "dense": dense.get_concrete_function(),
    }


def warmup_inputs() -> dict[str, dict[str, Any]]:
    """One request per signature on the shared example drawing."""
    image = encode_png(inputs.example_drawing(96))
    points = np.array([[20.0, 30.0], [48.0, 48.0], [70.0, 60.0]], np.float32)
    return {
        "serving_default": {"image": image, "points": points},
        "dense": {"image": image, "stride": np.int32(16)},
    }
