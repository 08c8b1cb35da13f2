"""SavedModel signatures of the SketchZooms family and their warmup inputs.

Every signature comes twice: `image` as encoded bytes (a tf.string scalar, PNG / JPEG, any
size) and, in `<name>_floats`, as float32 [H, W, 3] in [0, 1] of any size.

- `describe` (= `serving_default`): `image` + `points` float32 [N, 2] (x, y) pixels of that
  image -> `descriptors` float32 [N, D].
- `dense`: `image` + `stride` int32 -> `points` [P, 2] (input-image pixels) on a grid inside
  the dilated ink mask, `descriptors` [P, D], `num_points` (P <= serving.max_dense_points).
- `match`: `image_a` + `points_a` [N, 2] + `image_b` + `stride` -> for each point of A its
  nearest (L2 in descriptor space) of B's `dense` points: `points_b` [N, 2] (pixels of
  `image_b`), `distances` [N], `mutual` bool [N] (the pair is mutual nearest neighbours, the
  evaluation's `mutual_nn` matcher), `num_candidates` (P). An `image_b` without ink is
  InvalidArgument naming it.

Points use the pixel-corner convention of `sketch_tf.data.zooms`. Images go through the
serving input layer (`sketch_tf.export.inputs`): resized to `data.image_size` as in
evaluation, malformed bytes give InvalidArgument naming the input.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.core.png import encode_png
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


def _nearest(desc_a, desc_b):
    """For each row of desc_a [N, D] its nearest row of desc_b [P, D] (P >= 1) by L2:
    (index int32 [N], distance float32 [N], mutual bool [N]: a is also b's nearest)."""
    d2 = (
        tf.reduce_sum(desc_a * desc_a, 1, keepdims=True)
        - 2.0 * tf.matmul(desc_a, desc_b, transpose_b=True)
        + tf.reduce_sum(desc_b * desc_b, 1)[None, :]
    )
    nn_b = tf.argmin(d2, 1, output_type=tf.int32)
    nn_a = tf.argmin(d2, 0, output_type=tf.int32)
    mutual = tf.equal(tf.gather(nn_a, nn_b), tf.range(tf.shape(desc_a)[0]))
    dist = tf.sqrt(tf.maximum(tf.gather(d2, nn_b, batch_dims=1), 0.0))
    return nn_b, dist, mutual


@dataclasses.dataclass
class ZoomsServing:
    """The `Serving` of the SketchZooms family: the signatures of the module docstring."""

    task: Any  # the family's Task

    def signatures(self, models, gallery=None) -> dict[str, Any]:
        """`describe` (= `serving_default`), `dense` and `match`, each with its `_floats` variant
        (see the module docstring), over `models["zooms"]`. `gallery` must be None: this family
        serves no retrieval."""
        if gallery is not None:
            raise ValueError("zooms: --gallery is for the retrieval families (zs_sbir, style_sbir)")
        task, model = self.task, models["zooms"]
        cfg = task.config
        size = int(cfg.data.image_size)
        kw = task.zoom_kwargs(training=False)
        chunk = int(cfg.serving.chunk_points)
        cap = int(cfg.serving.max_dense_points)
        prepare = inputs.prepare_drawing_geometry(size)
        points_spec = tf.TensorSpec([None, 2], tf.float32, name="points")
        stride_spec = tf.TensorSpec([], tf.int32, name="stride")

        def descriptors(img, pts):
            return describe_graph(model, img[None], pts[None], kw, chunk)[0]

        def grid(img, stride):
            return dense_points(
                img, stride, cap, int(cfg.serving.dilate_px), float(cfg.serving.ink_threshold)
            )

        def describe(x, extra):
            img, scale, offset = x["image"]
            return {"descriptors": descriptors(img, extra["points"] * scale + offset)}

        def dense(x, extra):
            img, scale, offset = x["image"]
            pts = grid(img, extra["stride"])
            return {
                "points": (pts - offset) / scale,
                "descriptors": descriptors(img, pts),
                "num_points": tf.shape(pts)[0],
            }

        def match(x, extra):
            img_a, scale_a, offset_a = x["image_a"]
            img_b, scale_b, offset_b = x["image_b"]
            desc_a = descriptors(img_a, extra["points_a"] * scale_a + offset_a)
            pts_b = grid(img_b, extra["stride"])
            check = tf.debugging.Assert(
                tf.shape(pts_b)[0] > 0, ["input `image_b`: no ink found to match against"]
            )
            with tf.control_dependencies([check]):
                desc_b = descriptors(img_b, pts_b)
            nn, dist, mutual = _nearest(desc_a, desc_b)
            return {
                "points_b": (tf.gather(pts_b, nn) - offset_b) / scale_b,
                "distances": dist,
                "mutual": mutual,
                "num_candidates": tf.shape(pts_b)[0],
            }

        out = {}
        out.update(
            inputs.with_float_variant(
                "describe", describe, ["image"], [points_spec], prepare, batched=False
            )
        )
        out.update(
            inputs.with_float_variant(
                "dense", dense, ["image"], [stride_spec], prepare, batched=False
            )
        )
        out.update(
            inputs.with_float_variant(
                "match",
                match,
                ["image_a", "image_b"],
                [tf.TensorSpec([None, 2], tf.float32, name="points_a"), stride_spec],
                prepare,
                batched=False,
            )
        )
        out["serving_default"] = out["describe"]
        return out

    def warmup_inputs(self, signatures=None) -> dict[str, dict[str, Any]]:
        """One request per signature on the shared example drawing."""
        drawing = inputs.example_drawing(96)
        image = encode_png(drawing)
        floats = drawing.astype(np.float32) / 255.0
        points = np.array([[20.0, 30.0], [48.0, 48.0], [70.0, 60.0]], np.float32)
        stride = np.int32(16)
        requests = {
            "describe": {"image": image, "points": points},
            "describe_floats": {"image": floats, "points": points},
            "dense": {"image": image, "stride": stride},
            "dense_floats": {"image": floats, "stride": stride},
            "match": {"image_a": image, "image_b": image, "points_a": points, "stride": stride},
            "match_floats": {
                "image_a": floats, "image_b": floats, "points_a": points, "stride": stride
            },
        }  # fmt: skip
        requests["serving_default"] = requests["describe"]
        return requests
