"""Training and test data of the SketchZooms family: batches of correspondence pairs with a
fixed number of points (`correspondence_batches`) and the original's point triplets
(`correspondence_triplets`).

Images are decoded and fitted to the model's side by `sketch_tf.data.pipeline` (aspect kept,
white pad) and the points mapped with them; records of a category come from the per-class
streams of `pipeline`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline, schema, tfrecord
from sketch_tf.data.pipeline import AUTOTUNE


def _fit(encoded: tf.Tensor, points: tf.Tensor, image_size: int):
    """Encoded drawing and its float32 [N, 2] points -> (float32 [S, S, 3] image fitted to
    `image_size` (aspect kept, white pad), the points in that image's pixels)."""
    img, scale, offset = pipeline.resize_pad_geometry(
        pipeline.decode_image(encoded), image_size, 1.0
    )
    return img, points * scale + offset


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

    ds = ds.map(schema.parse_correspondence_pair, num_parallel_calls=AUTOTUNE)
    if category_ids is not None:
        keep = tf.constant(list(category_ids) or [-1], tf.int64)
        ds = ds.filter(
            lambda r: tf.reduce_any(tf.equal(tf.cast(r[schema.CATEGORY_ID], tf.int64), keep))
        )

    def prep(r, s):
        img_a, pa = _fit(r[schema.IMAGE_A], r[schema.POINTS_A], image_size)
        img_b, pb = _fit(r[schema.IMAGE_B], r[schema.POINTS_B], image_size)
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

    ds = tf.data.Dataset.zip((ds, pipeline.element_seeds(seed))).map(
        prep, num_parallel_calls=AUTOTUNE
    )
    return pipeline.batched(ds, batch_size, drop_remainder=training)


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
    ids = pipeline.check_classes(manifest, classes, [], dataset_dir)
    per_class = manifest["counts"]["per_class"]
    names = manifest["classes"]
    counts = np.array([per_class.get(names[i], 0) for i in ids], np.float64)
    if not counts.sum():
        raise ValueError(f"{dataset_dir}: no records of classes {[names[i] for i in ids]}")
    logits = tf.constant(np.log(np.maximum(counts, 1e-30))[None], tf.float32)

    def streams(offset):
        return [
            pipeline.class_domain_stream(
                dataset_dir,
                manifest,
                c,
                None,
                pipeline.stream_seed(seed, offset, i),
                shuffle_buffer,
            )
            for i, c in enumerate(ids)
        ]

    category = pipeline.element_seeds(seed + 1).map(
        lambda s: tf.random.stateless_categorical(logits, 1, s, dtype=tf.int64)[0, 0]
    )
    anchors = tf.data.Dataset.choose_from_datasets(streams(11), category)
    negatives = tf.data.Dataset.choose_from_datasets(
        streams(23),
        category.flat_map(lambda c: tf.data.Dataset.from_tensors(c).repeat(num_candidates)),
    ).batch(num_candidates, drop_remainder=True)

    def one_point(rec, s, sides):
        r = schema.parse_correspondence_pair(rec)
        n = tf.shape(r[schema.POINT_IDS])[0]
        j = tf.random.stateless_uniform([], s, 0, tf.maximum(n, 1), dtype=tf.int32)
        out = []
        for image_key, points_key in sides:
            img, pts = _fit(r[image_key], r[points_key], image_size)
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

    ds = tf.data.Dataset.zip((anchors, negatives, category, pipeline.element_seeds(seed)))
    return ds.map(prep, num_parallel_calls=AUTOTUNE).with_options(pipeline.dataset_options())
