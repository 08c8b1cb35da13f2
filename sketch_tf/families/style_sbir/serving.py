"""SavedModel signatures of the style-aware SBIR family and their warmup inputs.

Embeddings (each L2-normalised, `images` [N] encoded, or `images` float32 [N, H, W, 3] in
[0, 1] of any size for the `_floats` variants):

- `serving_default` = `embed_structure_sketch`: sketches -> `embedding` [N, E];
- `embed_structure_image`: gallery images -> `embedding` [N, E] (the structure space);
- `embed_style`: exemplars or gallery images -> `embedding` [N, F] (the style space);
- `embed_structure_sketch_floats`, `embed_structure_image_floats`, `embed_style_floats`.

Scoring (query time, alpha chosen per request):

- `score`: `sketches` [Q] + `exemplars` [Q] encoded, `gallery_structure` float32 [N, E] and
  `gallery_style` [N, F] (the gallery's `embed_structure_image` / `embed_style` outputs),
  `alpha` float32 scalar in [0, 1] -> `scores` [Q, N] = alpha * cos(structure) + (1 - alpha)
  * cos(style), as evaluation ranks. An alpha outside [0, 1] is InvalidArgument naming it.

Images go through the serving input layer (`sketch_tf.export.inputs`) exactly as evaluation
preprocesses records: sketches keep their aspect with white padding, images are resized and
centre-cropped to `data.image_size`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data.images import encode_png
from sketch_tf.export import inputs


def _unit(x):
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


def serving_signatures(task, models) -> dict[str, Any]:
    """The signatures above (name -> concrete function)."""
    size = int(task.config.data.image_size)
    towers = task.towers(models)
    out = {}
    for name, role, is_sketch in (
        ("embed_structure_sketch", "structure_sketch", True),
        ("embed_structure_image", "structure_image", False),
        ("embed_style", "style", False),
    ):
        tower = towers[role]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def from_bytes(images, tower=tower, is_sketch=is_sketch):
            x = inputs.images_from_bytes(images, "images", size, is_sketch=is_sketch)
            return {"embedding": tower(x, training=False)}

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]
        )
        def from_floats(images, tower=tower, is_sketch=is_sketch):
            x = inputs.images_from_floats(images, "images", size, is_sketch=is_sketch)
            return {"embedding": tower(x, training=False)}

        out[name] = from_bytes.get_concrete_function()
        out[f"{name}_floats"] = from_floats.get_concrete_function()
    out["serving_default"] = out["embed_structure_sketch"]
    sketch_tower, style_tower = towers["structure_sketch"], towers["style"]
    # The widths of the gallery embeddings, for `warmup_inputs` (called after this).
    task._serving_dims = (int(sketch_tower.output.shape[-1]), int(style_tower.output.shape[-1]))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="sketches"),
            tf.TensorSpec([None], tf.string, name="exemplars"),
            tf.TensorSpec([None, None], tf.float32, name="gallery_structure"),
            tf.TensorSpec([None, None], tf.float32, name="gallery_style"),
            tf.TensorSpec([], tf.float32, name="alpha"),
        ]
    )
    def score(sketches, exemplars, gallery_structure, gallery_style, alpha):
        ok = tf.logical_and(alpha >= 0.0, alpha <= 1.0)  # False for NaN too
        check = tf.debugging.Assert(ok, ["input `alpha`: expected a number in [0, 1], got", alpha])
        with tf.control_dependencies([check]):
            alpha = tf.identity(alpha)
        k = sketch_tower(inputs.images_from_bytes(sketches, "sketches", size, True), training=False)
        x = style_tower(inputs.images_from_bytes(exemplars, "exemplars", size, False),
                        training=False)  # fmt: skip
        structure = tf.matmul(_unit(k), _unit(gallery_structure), transpose_b=True)
        style = tf.matmul(_unit(x), _unit(gallery_style), transpose_b=True)
        return {"scores": alpha * structure + (1.0 - alpha) * style}

    out["score"] = score.get_concrete_function()
    return out


def warmup_inputs(task) -> dict[str, dict[str, Any]]:
    """One request per signature on the shared example drawing (a coloured copy as image)."""
    size = int(task.config.data.image_size)
    img = inputs.example_drawing(size)
    png = encode_png(img)
    colour = img.copy()
    colour[img[..., 0] == 255] = (240, 200, 120)  # a coloured background: a "styled" image
    colour_png = encode_png(colour)
    floats = img[None].astype(np.float32) / 255.0
    # Gallery embeddings of the right widths (set by `serving_signatures`).
    e_dim, f_dim = getattr(task, "_serving_dims", (8, 8))
    return {
        "serving_default": {"images": np.array([png, png], dtype=object)},
        "embed_structure_sketch": {"images": np.array([png], dtype=object)},
        "embed_structure_image": {"images": np.array([colour_png], dtype=object)},
        "embed_style": {"images": np.array([colour_png], dtype=object)},
        "embed_structure_sketch_floats": {"images": floats},
        "embed_structure_image_floats": {"images": colour[None].astype(np.float32) / 255.0},
        "embed_style_floats": {"images": colour[None].astype(np.float32) / 255.0},
        "score": {
            "sketches": np.array([png], dtype=object),
            "exemplars": np.array([colour_png], dtype=object),
            "gallery_structure": np.ones((3, e_dim), np.float32),
            "gallery_style": np.ones((3, f_dim), np.float32),
            "alpha": np.float32(0.5),
        },
    }
