"""A retrieval gallery stored inside a servable: embeddings, keys and labels, searched in TF.

`ServingGallery` holds the gallery as variables of the SavedModel (its search matrix,
`sketch_tf.index.search_matrix`, one string key and one class name per row) and answers
`top_k` inside a signature with `sketch_tf.index.exact_top_k`, the library's exact search
(ties in gallery order). It is built at export time from a labelled-image records dataset
(`export.py --gallery=RECORDS`, `gallery_rows`) by the task's `Retrieval`, and carries a
manifest (the model that embedded it, the records, their domains and the classes it was
restricted to, the row count) written beside the version as `assets.extra/gallery.json`.
The default gallery (`export.py --gallery=test`) is the run's test records of the classes it
was evaluated on (`Retrieval.gallery_classes`, from `data.classes`); a named folder keeps
every class. A task whose towers read cached frozen-trunk features
(`Task.uses_feature_cache()`) embeds a gallery with its heads on the cached features of the
folder's images (`Retrieval.gallery_embed`), the same embeddings as its full towers.
Row n of a gallery is the n-th record of its domains and classes in shard order.

Keys are the records' `source` (the image's path below the source root), or
`<domain>/<class>/<instance_id>` when a record has none, so a result names a file a user can
open.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf import index as index_lib
from sketch_tf.data import cache, pipeline, schema, tfrecord
from sketch_tf.data.options import one_pass

MANIFEST_FILE = os.path.join("assets.extra", "gallery.json")


def record_key(source: bytes, domain: bytes, class_name: bytes, instance_id: bytes) -> str:
    """The key of one gallery record (see the module docstring)."""
    if source:
        return source.decode("utf-8")
    parts = [domain.decode("utf-8"), class_name.decode("utf-8"), instance_id.decode("utf-8")]
    return "/".join(parts)


def gallery_rows(
    records_dir: str,
    embed: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
    *,
    image_size: int,
    domains: list[str] | None,
    sketch_domain: str,
    batch_size: int = 64,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Embeds every record of `domains` and `classes` (names; None: all) in a labelled-image
    records folder, in shard order.

    Args:
      records_dir: a folder written by prepare_data.py (manifest + shards).
      embed: a batch {"image": preprocessed images float32 [B, S, S, 3], "image_key": their
        cache keys int64 [B] (`cache.image_keys` of the encoded images)} -> {space: float32
        [B, E_space]} (`Retrieval.gallery_embed`).
      image_size: S, as in evaluation (`data.image_size`).
      classes: class names of the folder's manifest (an unknown one fails naming the folder).

    Returns:
      {"embeddings": {space: float32 [N, E_space]}, "keys": str [N], "labels": str [N]
      (class names), "domains": str [N], "records": records_dir, "classes": the class names
      (list) or None, "size": N}. Raises ValueError naming the folder, the domains and the
      classes when no record matches.
    """
    tfrecord.read_manifest(records_dir, kind=schema.KIND_LABELLED_IMAGE)  # names a bad folder
    classes = None if classes is None else list(classes)
    records = pipeline.labelled_records(records_dir, domains, classes)

    def prep(r):
        img = pipeline.preprocess(
            r[schema.IMAGE], tf.equal(r[schema.DOMAIN], sketch_domain), image_size, False, None
        )
        meta = {k: r[k] for k in (schema.SOURCE, schema.DOMAIN, schema.CLASS_NAME)}
        batch = {"image": img, "image_key": cache.image_keys(r[schema.IMAGE])}
        return batch, {**meta, schema.INSTANCE_ID: r[schema.INSTANCE_ID]}

    ds = one_pass(
        records.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
    )
    embed_fn = tf.function(embed, reduce_retracing=True)
    parts: dict[str, list[np.ndarray]] = {}
    keys, labels, doms = [], [], []
    for batch, meta in ds:
        for space, value in embed_fn(batch).items():
            parts.setdefault(space, []).append(value.numpy().astype(np.float32))
        m = {k: v.numpy() for k, v in meta.items()}
        for i in range(len(m[schema.DOMAIN])):
            keys.append(
                record_key(
                    m[schema.SOURCE][i],
                    m[schema.DOMAIN][i],
                    m[schema.CLASS_NAME][i],
                    m[schema.INSTANCE_ID][i],
                )
            )
            labels.append(m[schema.CLASS_NAME][i].decode("utf-8"))
            doms.append(m[schema.DOMAIN][i].decode("utf-8"))
    if not keys:
        raise ValueError(
            f"gallery {records_dir}: no records of domains {domains} and classes "
            f"{classes or 'all'} to embed"
        )
    return {
        "embeddings": {space: np.concatenate(v) for space, v in parts.items()},
        "keys": np.asarray(keys),
        "labels": np.asarray(labels),
        "domains": np.asarray(doms),
        "records": os.path.abspath(records_dir),
        "classes": classes,
        "size": len(keys),
    }


def required_retrieval(task):
    """`task.retrieval()` (a `sketch_tf.train.tasks.Retrieval`); ValueError naming the task
    when it serves no retrieval (None)."""
    retrieval = task.retrieval()
    if retrieval is None:
        raise ValueError(f"task {task.name!r} serves no retrieval (its Task.retrieval() is None)")
    return retrieval


def family_gallery(
    task, models, records_dir: str, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """A records folder embedded as the task's gallery: `gallery_rows` with its retrieval's
    `gallery_embed` of the folder (the heads on its cached trunk features when the task uses
    feature caches, computed on first use) over its `gallery_domains` and `classes` (names;
    None: every class), then its `index_vectors`.

    Returns `gallery_rows`' dict plus "vectors" float32 [N, D] (the gallery in the queries'
    space), "metric" and "domains". Raises ValueError when the task serves no retrieval.
    """
    retrieval = required_retrieval(task)
    d = task.config.data
    domains = retrieval.gallery_domains()
    rows = gallery_rows(
        records_dir,
        retrieval.gallery_embed(models, records_dir, classes),
        image_size=int(d.image_size),
        domains=domains,
        sketch_domain=d.sketch_domain,
        batch_size=int(task.config.eval.batch_size),
        classes=classes,
    )
    vectors, metric = retrieval.index_vectors(rows["embeddings"])
    return {**rows, "vectors": vectors, "metric": metric, "domains": domains}


def serving_gallery(
    task, models, records_dir: str, manifest: dict, classes: Sequence[str] | None = None
) -> ServingGallery:
    """The `ServingGallery` of a records folder's images of `classes` (None: all;
    `family_gallery`), carrying `manifest` + {"records", "domains", "classes" (list or
    None)}."""
    g = family_gallery(task, models, records_dir, classes)
    info = {**manifest, "records": g["records"], "domains": g["domains"], "classes": g["classes"]}
    return ServingGallery(g["vectors"], g["keys"], g["labels"], g["metric"], info)


def unit_rows(x) -> tf.Tensor:
    """Rows divided by their L2 norm (an all-zero row stays zero: cosine 0 to everything)."""
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


class ServingGallery(tf.Module):
    """The gallery of a `retrieve` signature.

    Args:
      vectors: float32 [N, D], the gallery in the space of the queries: the embeddings
        (already unit rows for cosine), or for style retrieval the concatenated unit
        structure and style embeddings; stored as their `search_matrix`.
      keys, labels: str [N] (see the module docstring).
      metric: "euclidean" (score = minus the L2 distance), "cosine" or "inner_product" (score
        = inner product).
      manifest: JSON-able description (model, checkpoint, records, ...).
    """

    def __init__(self, vectors, keys, labels, metric: str, manifest: dict[str, Any]):
        super().__init__(name="gallery")
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(keys) or len(keys) != len(labels):
            raise ValueError(
                f"ServingGallery: vectors {vectors.shape}, {len(keys)} keys, {len(labels)} labels"
            )
        if len(keys) == 0:
            raise ValueError("ServingGallery: empty gallery")
        self.metric = metric
        self.size = int(len(keys))
        self.manifest = {**manifest, "size": self.size, "metric": metric}
        self.dim = int(vectors.shape[1])
        matrix = index_lib.search_matrix(vectors, metric)
        self.matrix = tf.Variable(matrix.rows, trainable=False, name="matrix")
        self.bias = None  # the squared norms of a euclidean gallery (`SearchMatrix.bias`)
        if matrix.bias is not None:
            self.bias = tf.Variable(matrix.bias, trainable=False, name="bias")
        self.keys = tf.Variable(np.asarray(keys, dtype=object), trainable=False, name="keys")
        self.labels = tf.Variable(np.asarray(labels, dtype=object), trainable=False, name="labels")

    def top_k(self, queries: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        """Exact top-k of query rows (graph op, inside a signature).

        Args:
          queries: float32 [Q, D] (the space of the gallery's `vectors`).
          k: int32 scalar, >= 1 (InvalidArgument "input `k`" otherwise); more than the gallery
            holds is clipped.

        Returns:
          {"keys" string [Q, k'], "labels" string [Q, k'], "ids" int64 [Q, k'] (gallery rows),
          "scores" float32 [Q, k'] (best first), "k" int32 scalar k' = min(k, N), "clipped"
          bool scalar (k > N)}.
        """
        k = tf.convert_to_tensor(k, tf.int32)
        check = tf.debugging.Assert(k >= 1, ["input `k`: expected a positive integer, got", k])
        with tf.control_dependencies([check]):
            used = tf.minimum(k, self.size)
        matrix = index_lib.SearchMatrix(
            self.matrix.read_value(), None if self.bias is None else self.bias.read_value()
        )
        scores, idx = index_lib.exact_top_k(queries, None, used, self.metric, matrix=matrix)
        return {
            "keys": tf.gather(self.keys, idx),
            "labels": tf.gather(self.labels, idx),
            "ids": tf.cast(idx, tf.int64),
            "scores": scores,
            "k": used,
            "clipped": k > used,
        }

    def write_manifest(self, version_dir: str) -> str:
        """Writes `assets.extra/gallery.json` into an export version folder."""
        path = os.path.join(version_dir, MANIFEST_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.manifest, f, indent=2)
        return path
