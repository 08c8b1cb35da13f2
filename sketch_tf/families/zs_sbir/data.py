"""Training data of zero-shot SBIR: cross-domain triplets (sketch of class a, photo of class a,
photo of a negative class n != a) and how the classes a and n are drawn.

The negative class is uniform over the other classes or drawn from class embeddings
(`negative_class_logits`: the original's inverse distance, or a softmax); the anchor class is
uniform or in proportion to each class's sketch count. Records come from the per-class
streams of `sketch_tf.data.pipeline`; images are preprocessed by `pipeline.preprocess`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline, schema, tfrecord
from sketch_tf.data.pipeline import AUTOTUNE, TRIPLET_OUTPUTS

#: Where the negative class comes from: uniform over the other classes, or class embeddings.
NEGATIVES = ("random", "class_embedding")
#: How `triplet_batches` draws the negative class from class embeddings (`negative_class_logits`).
NEGATIVE_SAMPLING = ("inverse_distance", "softmax")
#: How `triplet_batches` draws the anchor class (`class_pairs`).
ANCHOR_SAMPLING = ("uniform", "sketch_count")


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

    return pipeline.element_seeds(seed).map(choose)


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
      training: True augments every image (the fused `pipeline.augment_train_image`); False
        gives the evaluation preprocessing (fit + centre crop/pad, no randomness in the
        pixels). The streams are endless and shuffled either way.
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
    ids = pipeline.check_classes(manifest, classes, [sketch_domain, photo_domain], dataset_dir)
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
        by_class = pipeline.keys_by_domain_class(dataset_dir, manifest)

        def stream(domain, c, seed_c):
            keys = by_class.get((domain, c), np.zeros([0], np.int64))
            return (
                tf.data.Dataset.from_tensor_slices(keys)
                .repeat()
                .shuffle(shuffle_buffer, seed=seed_c, reshuffle_each_iteration=True)
            )
    else:

        def stream(domain, c, seed_c):
            return pipeline.class_domain_stream(
                dataset_dir, manifest, c, domain, seed_c, shuffle_buffer
            )

    def streams(domain, offset):
        return [stream(domain, c, pipeline.stream_seed(seed, offset, i)) for i, c in enumerate(ids)]

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
            pipeline.preprocess(r[schema.IMAGE], dom, image_size, training, s3[i])
            for i, (r, dom) in enumerate(((r_sk, True), (r_pos, False), (r_neg, False)))
        ]
        return {"sketch": images[0], "photo_pos": images[1], "photo_neg": images[2], **labels}

    ds = tf.data.Dataset.zip((sk, pos, neg, pairs, pipeline.element_seeds(seed))).map(
        prep, num_parallel_calls=AUTOTUNE
    )
    return pipeline.batched(ds, batch_size, drop_remainder=True)
