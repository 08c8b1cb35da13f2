"""The SketchZooms Task: training, evaluation and serving of zoom-view point descriptors.

Training batch (global batch = B correspondence pairs, M points each; built in `tf.data`):

    pair records -> correspondence_batches (resize to data.image_size, sample M points)
        -> drop unseen categories -> zoom_views with train-time jitter / rotation / flip
        -> {"views_a", "views_b": [B, M, K, S, S, 3], "point_ids", "mask": [B, M],
            "category_id": [B]}

Loss (DESIGN): every point of A and of B is an embedding labelled (category, semantic id).
Anchor / positive = the same semantic point in two drawings of one category; negatives are
other points *of the same category* in the global batch (gathered across replicas), mined
semi-hard (tfa's rule) or hard; triplet hinge with margin 1.0 on the non-squared Euclidean
distance. `loss.kind="contrastive"` is the per-pair alternative.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from sketch_tf import losses
from sketch_tf.data import pipeline, tfrecord
from sketch_tf.data.zooms import zoom_views
from sketch_tf.models.backbones import BACKBONES
from sketch_tf.models.layers import FUSION_MODES
from sketch_tf.models.zooms import build_zooms_model
from sketch_tf.train.tasks import Task, register_task

LOSS_KINDS = ("triplet", "contrastive")
MINING = ("semi_hard", "hard")

#: Point labels are category * _LABEL_STRIDE + semantic id (ids of the synthetic world are < 256;
#: real layouts use their own keypoint ids, far below this).
_LABEL_STRIDE = 1 << 20


def category_triplet_loss(
    embeddings,
    point_labels,
    categories,
    valid,
    margin: float = 1.0,
    mining: str = "semi_hard",
    distance: str = "l2",
) -> tf.Tensor:
    """Triplet loss with in-batch negatives restricted to the anchor's category.

    Positives of anchor i: every other valid row with the same category and point label.
    Negatives: valid rows with the same category and another point label.
    `"semi_hard"`: per (anchor, positive) the closest negative strictly farther than the
    positive, else the farthest negative (tfa's rule); mean over (a, p) pairs having a negative.
    `"hard"`: per anchor the farthest positive and the closest negative; mean over anchors.

    Args:
      embeddings: float32 [N, D].
      point_labels: int [N], semantic point id (unique within a category).
      categories: int [N], category of each row.
      valid: bool [N], False for padding rows (ignored entirely).
      margin: hinge margin (unit of `distance`).
      mining: "semi_hard" or "hard".
      distance: "l2" (non-squared Euclidean), "squared_l2" or "angular".

    Returns:
      float32 scalar; 0 when there is no valid triplet.
    """
    if mining not in MINING:
        raise ValueError(f"category_triplet_loss: mining must be one of {MINING}, got {mining!r}")
    x = tf.convert_to_tensor(embeddings, tf.float32)
    lab = tf.reshape(tf.cast(point_labels, tf.int64), [-1])
    cat = tf.reshape(tf.cast(categories, tf.int64), [-1])
    ok = tf.reshape(tf.cast(valid, tf.bool), [-1])
    d = losses.pairwise_distances(x, None, distance)
    both = tf.logical_and(ok[:, None], ok[None, :])
    same_cat = tf.logical_and(tf.equal(cat[:, None], cat[None, :]), both)
    same_pt = tf.equal(lab[:, None], lab[None, :])
    eye = tf.cast(tf.eye(tf.shape(x)[0]), tf.bool)
    positive = tf.logical_and(tf.logical_and(same_cat, same_pt), tf.logical_not(eye))
    negative = tf.logical_and(same_cat, tf.logical_not(same_pt))
    has_neg = tf.reduce_any(negative, axis=1)
    low = tf.fill(tf.shape(d), d.dtype.min)
    high = tf.fill(tf.shape(d), d.dtype.max)
    farthest_neg = tf.reduce_max(tf.where(negative, d, low), axis=1)
    if mining == "hard":
        has_pos = tf.reduce_any(positive, axis=1)
        use = tf.logical_and(has_pos, has_neg)
        hp = tf.reduce_max(tf.where(positive, d, low), axis=1)
        hn = tf.reduce_min(tf.where(negative, d, high), axis=1)
        hinge = tf.maximum(tf.where(use, hp - hn, 0.0) + margin, 0.0)
    else:
        use = tf.logical_and(positive, has_neg[:, None])
        semihard, found = losses._semihard_negative_distances(d, negative)
        neg_d = tf.where(found, semihard, tf.where(use, farthest_neg[:, None], 0.0))
        hinge = tf.maximum(tf.where(use, d - neg_d, 0.0) + margin, 0.0)
    use_f = tf.cast(use, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(hinge * use_f), tf.reduce_sum(use_f))


def _as_tuple(value) -> tuple:
    return tuple(value) if value is not None else ()


def records_dir(config: ml_collections.ConfigDict, split: str) -> str:
    """`<config.data.root>/<split>` (relative roots resolve against the current directory,
    then the project root). Raises FileNotFoundError naming the folder and the command that
    writes it when the records are missing."""
    from sketch_tf.paths import PROJECT_ROOT

    root = str(config.data.root)
    candidates = [root] if os.path.isabs(root) else [root, os.path.join(PROJECT_ROOT, root)]
    for base in candidates:
        path = os.path.join(base, split)
        if os.path.isfile(os.path.join(path, tfrecord.MANIFEST)):
            return path
    raise FileNotFoundError(
        f"zooms: no correspondence records in {os.path.join(root, split)} (manifest.json "
        f"missing). Write them with: python prepare_data.py --task=zooms --out={root} "
        "(synthetic world), or convert the SketchZooms layout with prepare_data.py."
    )


def split_categories(manifest: dict, unseen: tuple) -> tuple[list[int], list[int]]:
    """(seen ids, unseen ids) of the manifest's classes; raises on unknown unseen names."""
    classes = list(manifest["classes"])
    bad = [c for c in unseen if c not in classes]
    if bad:
        raise ValueError(
            f"zooms: data.unseen_categories {bad} are not classes of the records {classes}"
        )
    unseen_ids = [classes.index(c) for c in unseen]
    return [i for i in range(len(classes)) if i not in unseen_ids], unseen_ids


@register_task("zooms")
class ZoomsTask(Task):
    """SketchZooms descriptors (see module docstring); models: {"zooms": keras.Model}."""

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config) -> list[str]:
        p: list[str] = []
        for section in ("data", "model", "zooms", "loss", "eval", "serving"):
            if section not in config:
                p.append(f"config has no '{section}' section (see configs/zooms.py)")
        if p:
            return p
        m, z, loss, data = config.model, config.zooms, config.loss, config.data
        if m.backbone not in BACKBONES:
            p.append(f"model.backbone must be one of {sorted(BACKBONES)}, got {m.backbone!r}")
        if m.get("backbone_pooling") and m.backbone != "small_cnn":
            p.append(
                f"model.backbone_pooling={m.backbone_pooling!r} applies to small_cnn only (the "
                f"torchvision layouts keep their own pooling); set it to '' for {m.backbone!r}"
            )
        elif m.get("backbone_pooling") and m.backbone_pooling not in ("avg", "max", "flatten"):
            p.append(
                "model.backbone_pooling must be 'avg', 'max', 'flatten' or '', got "
                f"{m.backbone_pooling!r}"
            )
        if m.fusion not in FUSION_MODES:
            p.append(f"model.fusion must be one of {FUSION_MODES}, got {m.fusion!r}")
        if not (isinstance(m.view_size, int) and m.view_size >= 16):
            p.append(f"model.view_size must be an integer >= 16, got {m.view_size!r}")
        if len(_as_tuple(z.zooms)) != m.num_views:
            p.append(f"model.num_views={m.num_views} must equal len(zooms.zooms)={len(z.zooms)}")
        if any(float(v) <= 0 for v in _as_tuple(z.zooms)):
            p.append(f"zooms.zooms must be positive, got {tuple(z.zooms)}")
        elif not 0 <= z.scale_jitter < min(z.zooms):
            p.append(f"zooms.scale_jitter must be in [0, min(zooms.zooms)), got {z.scale_jitter}")
        if not 0 <= z.max_rotation_deg <= 180:
            p.append(f"zooms.max_rotation_deg must be in [0, 180], got {z.max_rotation_deg}")
        if not 0 <= z.flip_prob <= 1:
            p.append(f"zooms.flip_prob must be in [0, 1], got {z.flip_prob}")
        if loss.kind not in LOSS_KINDS:
            p.append(f"loss.kind must be one of {LOSS_KINDS}, got {loss.kind!r}")
        if loss.mining not in MINING:
            p.append(f"loss.mining must be one of {MINING}, got {loss.mining!r}")
        if loss.distance not in losses.DISTANCES:
            p.append(f"loss.distance must be one of {losses.DISTANCES}, got {loss.distance!r}")
        if loss.margin <= 0:
            p.append(f"loss.margin must be > 0, got {loss.margin}")
        if not (isinstance(data.num_points, int) and data.num_points >= 2):
            p.append(f"data.num_points must be an integer >= 2, got {data.num_points!r}")
        if not (isinstance(data.image_size, int) and data.image_size >= 32):
            p.append(f"data.image_size must be an integer >= 32, got {data.image_size!r}")
        from sketch_tf.eval.correspondence import MATCHERS

        if config.eval.matcher not in MATCHERS:
            p.append(f"eval.matcher must be one of {sorted(MATCHERS)}, got {config.eval.matcher!r}")
        if config.eval.max_pairs < 1:
            p.append(f"eval.max_pairs must be >= 1, got {config.eval.max_pairs}")
        if config.serving.max_dense_points < 1:
            p.append(
                f"serving.max_dense_points must be >= 1, got {config.serving.max_dense_points}"
            )
        return p

    # ---- helpers -------------------------------------------------------------------------
    def zoom_kwargs(self, training: bool) -> dict[str, Any]:
        """Arguments of `zoom_views` for this config (augmentations only when training)."""
        z = self.config.zooms
        kw = dict(
            zooms=tuple(float(v) for v in z.zooms),
            base_half_size=float(z.base_half_size),
            reference_size=float(z.reference_size),
            view_size=int(self.config.model.view_size),
            antialias=bool(z.get("antialias", False)),
        )
        if training:
            kw.update(
                scale_jitter=float(z.scale_jitter),
                max_rotation_deg=float(z.max_rotation_deg),
                flip_prob=float(z.flip_prob),
            )
        return kw

    # ---- model ---------------------------------------------------------------------------
    def build_models(self):
        m = self.config.model
        backbone_kwargs = {}
        if m.get("backbone_weights"):
            backbone_kwargs["weights_path"] = m.backbone_weights
        if m.get("backbone_widths"):
            backbone_kwargs["widths"] = tuple(m.backbone_widths)
        if m.get("backbone_pooling"):
            backbone_kwargs["pooling"] = m.backbone_pooling
        model = build_zooms_model(
            backbone=m.backbone,
            view_size=int(m.view_size),
            num_views=int(m.num_views),
            descriptor_dim=int(m.descriptor_dim),
            fusion=m.fusion,
            l2_normalize=bool(m.l2_normalize),
            dropout=float(m.dropout),
            head=m.head,
            head_hidden=int(m.head_hidden) or None,
            backbone_kwargs=backbone_kwargs,
            weights_path=m.weights_path or None,
        )
        return {"zooms": model}

    # ---- data ----------------------------------------------------------------------------
    def _pairs(self, split: str, training: bool, seed: int, num_points: int, which: str):
        """Unbatched pair examples of `split` restricted to seen / unseen / all categories."""
        path = records_dir(self.config, split)
        manifest = tfrecord.read_manifest(path)
        seen, unseen = split_categories(manifest, _as_tuple(self.config.data.unseen_categories))
        keep = {"seen": seen, "unseen": unseen, "all": seen + unseen}[which]
        ds = pipeline.correspondence_batches(
            path,
            batch_size=1,
            num_points=num_points,
            image_size=int(self.config.data.image_size),
            seed=seed,
            training=training,
            shuffle_buffer=int(self.config.data.shuffle_buffer),
        ).unbatch()
        keep_t = tf.constant(keep or [-1], tf.int64)
        return ds.filter(
            lambda ex: tf.reduce_any(tf.equal(tf.cast(ex["category_id"], tf.int64), keep_t))
        )

    def build_train_dataset(self, global_batch_size, seed):
        ds = self._pairs("train", True, seed, int(self.config.data.num_points), "seen")
        ds = ds.batch(global_batch_size, drop_remainder=True)
        kw = self.zoom_kwargs(training=True)
        k, s = len(kw["zooms"]), kw["view_size"]

        def views(step, batch):
            b = tf.shape(batch["points_a"])[0]
            m = tf.shape(batch["points_a"])[1]
            images = tf.concat([batch["image_a"], batch["image_b"]], 0)
            points = tf.concat([batch["points_a"], batch["points_b"]], 0)
            v = zoom_views(images, points, seed=tf.stack([tf.cast(seed, tf.int64), step]), **kw)
            v = tf.reshape(v, tf.stack([2, b, m, k, s, s, 3]))
            return {
                "views_a": v[0],
                "views_b": v[1],
                "point_ids": batch["point_ids"],
                "mask": batch["mask"],
                "category_id": tf.cast(batch["category_id"], tf.int64),
            }

        ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)
        return ds.map(views, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

    # ---- training ------------------------------------------------------------------------
    def compute_losses(self, models, batch, ctx):
        model = models["zooms"]
        va, vb = batch["views_a"], batch["views_b"]
        m = tf.shape(va)[1]
        shape = tf.concat([[-1], tf.shape(va)[2:]], 0)
        views = tf.concat([tf.reshape(va, shape), tf.reshape(vb, shape)], 0)
        desc = model(views, training=True)  # [2*b*m, D]
        ids = tf.reshape(batch["point_ids"], [-1])
        cat = tf.reshape(tf.repeat(batch["category_id"][:, None], m, axis=1), [-1])
        mask = tf.reshape(batch["mask"], [-1])
        # Global batch: every replica's points are candidates (differentiable gather).
        desc = ctx.all_gather(desc)
        ids = ctx.all_gather(tf.concat([ids, ids], 0))
        cat = ctx.all_gather(tf.concat([cat, cat], 0))
        mask = ctx.all_gather(tf.concat([mask, mask], 0))
        cfg = self.config.loss
        if cfg.kind == "triplet":
            loss = category_triplet_loss(
                desc, ids, cat, mask, float(cfg.margin), cfg.mining, cfg.distance
            )
            return {"total": ctx.share(loss), "triplet": ctx.share(loss)}
        loss = self._contrastive(desc, ids, cat, mask)
        return {"total": ctx.share(loss), "contrastive": ctx.share(loss)}

    def _contrastive(self, desc, ids, cat, mask):
        """Per-pair contrastive loss: every (a_i, b_i) match plus, per anchor, the nearest
        same-category non-matching point (a hard negative pair); mean over the pairs."""
        d = losses.pairwise_distances(desc, None, self.config.loss.distance)
        ok = tf.logical_and(mask[:, None], mask[None, :])
        same_cat = tf.logical_and(tf.equal(cat[:, None], cat[None, :]), ok)
        same_pt = tf.equal(ids[:, None], ids[None, :])
        eye = tf.cast(tf.eye(tf.shape(d)[0]), tf.bool)
        pos = tf.logical_and(tf.logical_and(same_cat, same_pt), tf.logical_not(eye))
        neg = tf.logical_and(same_cat, tf.logical_not(same_pt))
        # One positive (the first) and the hardest negative per row.
        pos_j = tf.argmax(tf.cast(pos, tf.int32), axis=1, output_type=tf.int32)
        neg_j = tf.argmin(tf.where(neg, d, d.dtype.max), axis=1, output_type=tf.int32)
        has_pos = tf.reduce_any(pos, 1)
        has_neg = tf.reduce_any(neg, 1)
        a = tf.concat([desc, desc], 0)
        other = tf.concat([tf.gather(desc, pos_j), tf.gather(desc, neg_j)], 0)
        same = tf.concat([tf.ones_like(has_pos), tf.zeros_like(has_neg)], 0)
        use = tf.cast(tf.concat([has_pos, has_neg], 0), tf.float32)
        per_pair = losses.contrastive_loss(
            a, other, same, float(self.config.loss.contrastive_margin), self.config.loss.distance
        )
        return tf.math.divide_no_nan(tf.reduce_sum(per_pair * use), tf.reduce_sum(use))

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, models, workdir=None):
        from sketch_tf.eval import zooms_eval

        return zooms_eval.evaluate_task(self, models["zooms"], workdir)

    # ---- export --------------------------------------------------------------------------
    def serving_signatures(self, models):
        from sketch_tf.eval import zooms_eval

        return zooms_eval.serving_signatures(self, models["zooms"])

    def warmup_inputs(self):
        from sketch_tf.eval import zooms_eval

        image = zooms_eval.example_drawing(96)
        points = np.array([[20.0, 30.0], [48.0, 48.0], [70.0, 60.0]], np.float32)
        return {
            "serving_default": {"image": image, "points": points},
            "dense": {"image": image, "stride": np.int32(16)},
        }


__all__ = ["ZoomsTask", "category_triplet_loss", "records_dir", "split_categories"]
