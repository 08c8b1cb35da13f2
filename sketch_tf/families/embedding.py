"""Embedding a labelled-image records folder for evaluation, shared by the families that
evaluate on one (zs_sbir, style_sbir): one pass in shard order, every embedding of a batch in
one `tf.function`, thumbnails for the pictures, and non-learned descriptors computed from the
very images the towers embed. This module is not a family (the registry lists sub-packages
only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline
from sketch_tf.data.options import one_pass

#: Side of the thumbnails kept for the retrieval pictures, in pixels.
THUMB = 48


def embed_labelled_records(
    records_dir: str,
    *,
    classes: Sequence[str] | None,
    domains: Sequence[str],
    image_size: int,
    sketch_domain: str,
    batch_size: int,
    embedders: dict[str, Callable[[dict[str, tf.Tensor]], tf.Tensor]],
    descriptors: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    empty_error: str,
) -> dict[str, np.ndarray]:
    """Embeds every record of `domains` and `classes` (None: all) in `records_dir`.

    Args:
      records_dir: a labelled-image records folder (prepare_data.py).
      image_size, sketch_domain: the evaluation preprocessing (`pipeline.labelled_dataset`).
      embedders: name -> function of a batch {"image": float32 [B, S, S, 3], "image_key":
        int64 [B] (the feature caches' key)} -> embeddings [B, E]; all run in one
        `tf.function` per batch.
      descriptors: name -> function of the preprocessed images float32 numpy [B, S, S, 3]
        -> descriptors [B, D] (the non-learned baselines), computed batch by batch.
      empty_error: the ValueError message when no record matches (" in <records_dir>" is
        appended).

    Returns:
      {name: [N, E] for every embedder and descriptor, "thumbs": uint8 [N, THUMB, THUMB, 3],
      "class_id": int64 [N] (the folder's class ids), "domain": str [N], "instance_id": str
      [N]}, rows in record order.
    """
    ds = one_pass(
        pipeline.labelled_dataset(
            records_dir,
            int(batch_size),
            image_size=int(image_size),
            training=False,
            classes=classes,
            domains=list(domains),
            sketch_domain=sketch_domain,
        )
    )

    @tf.function(reduce_retracing=True)  # the last batch is smaller
    def embed(batch):
        thumbs = tf.image.resize(batch["image"], [THUMB, THUMB], antialias=True)
        embeddings = {name: fn(batch) for name, fn in embedders.items()}
        return embeddings, tf.cast(tf.round(thumbs * 255.0), tf.uint8)

    descriptors = descriptors or {}
    parts: dict[str, list] = {
        k: [] for k in (*embedders, *descriptors, "thumbs", "class_id", "domain", "instance_id")
    }
    for batch in ds:
        embeddings, thumbs = embed({"image": batch["image"], "image_key": batch["image_key"]})
        for name, value in embeddings.items():
            parts[name].append(value.numpy())
        parts["thumbs"].append(thumbs.numpy())
        parts["class_id"].append(batch["class_id"].numpy())
        parts["domain"].append(np.asarray([x.decode() for x in batch["domain"].numpy()]))
        parts["instance_id"].append(np.asarray([x.decode() for x in batch["instance_id"].numpy()]))
        if descriptors:
            images = batch["image"].numpy()
            for name, describe in descriptors.items():
                parts[name].append(describe(images))
    if not parts["class_id"]:
        raise ValueError(f"{empty_error} in {records_dir}")
    return {k: np.concatenate(v) for k, v in parts.items()}


__all__ = ["THUMB", "embed_labelled_records"]
