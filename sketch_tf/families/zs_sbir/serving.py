"""SavedModel signatures of the zero-shot SBIR family and their warmup inputs.

- `serving_default`: `images` [N] encoded sketches (any size) -> `embedding` [N, E];
- `embed_photo`: `images` [N] encoded photos -> `embedding` [N, E];
- `embed_sketch`: `images` float32 [N, H, W, 3] sketches in [0, 1], any size ->
  `embedding` [N, E].

Images go through the serving input layer (`sketch_tf.export.inputs`) exactly as evaluation
preprocesses records: sketches keep their aspect with white padding, photos are resized and
centre-cropped to `data.image_size`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data.images import encode_png
from sketch_tf.export import inputs
from sketch_tf.models import zs_sbir as zs_models


def serving_signatures(task, models) -> dict[str, Any]:
    """The signatures above (name -> concrete function)."""
    size = int(task.config.data.image_size)
    sk, ph = zs_models.sketch_tower(models), zs_models.photo_tower(models)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def embed_sketch_bytes(images):
        x = inputs.images_from_bytes(images, "images", size, is_sketch=True)
        return {"embedding": sk(x, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def embed_photo(images):
        x = inputs.images_from_bytes(images, "images", size, is_sketch=False)
        return {"embedding": ph(x, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def embed_sketch(images):
        x = inputs.images_from_floats(images, "images", size, is_sketch=True)
        return {"embedding": sk(x, training=False)}

    return {
        "serving_default": embed_sketch_bytes.get_concrete_function(),
        "embed_photo": embed_photo.get_concrete_function(),
        "embed_sketch": embed_sketch.get_concrete_function(),
    }


def warmup_inputs(task) -> dict[str, dict[str, Any]]:
    """One request per signature on the shared example drawing (inverted for the photo)."""
    img = inputs.example_drawing(int(task.config.data.image_size))
    png = encode_png(img)
    return {
        "serving_default": {"images": np.array([png, png], dtype=object)},
        "embed_photo": {"images": np.array([encode_png(255 - img)], dtype=object)},
        "embed_sketch": {"images": img[None].astype(np.float32) / 255.0},
    }
