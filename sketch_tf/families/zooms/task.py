"""The SketchZooms Task: training, evaluation and serving of zoom-view point descriptors.

Training batch (global batch = B correspondence pairs, M points each; built in `tf.data`):

    pair records -> correspondence_batches (resize to data.image_size, sample M points)
        -> drop unseen categories -> zoom_views with train-time jitter / rotation / flip
        -> {"views_a", "views_b": [B, M, K, S, S, 3], "point_ids", "mask": [B, M],
            "category_id": [B]}

Loss (DESIGN): every point of A and of B is an embedding labelled (category, semantic id).
Anchor / positive = the same semantic point in two drawings of one category; negatives are
other points *of the same category* in the global batch (gathered across replicas), mined
semi-hard (tfa's rule; the CPU default) or hard by `losses.mined_triplet_loss` with a
category mask; triplet hinge with margin 1.0 on the non-squared Euclidean distance.
`loss.kind="contrastive"` is the per-pair alternative.

The original's batches (`data.batching="triplets"`, the `sketchzooms` variant): a step is
`train.batch_size` (64) real triplets, one point each, built by
`data.correspondence_triplets`: anchor = a point of drawing A, positive = the same point
in drawing B, and `loss.num_candidates` (5) negative candidates, points of other drawings of
the same category. `loss.mining="first_semi_hard"` keeps, per triplet, the first candidate
with d2(a, p) < d2(a, n) < d2(a, p) + margin (squared distances, candidates described in
inference mode, no gradient), else the last one, as the original's data loader does; only
anchor, positive and the chosen negative go through the model in training mode (no padding
rows).

Evaluation lives in `sketch_tf.families.zooms.evaluate`, signatures in `.serving`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from sketch_tf import losses
from sketch_tf.data import splits, tfrecord
from sketch_tf.data.zooms import zoom_views
from sketch_tf.families.zooms import config as family_config
from sketch_tf.families.zooms import data as zooms_data
from sketch_tf.families.zooms.evaluate import ZoomsEvaluator
from sketch_tf.families.zooms.serving import ZoomsServing
from sketch_tf.models import backbones
from sketch_tf.models.zooms import build_zooms_model, describe_views
from sketch_tf.train.tasks import Headline, Task


def _as_tuple(value) -> tuple:
    return tuple(value) if value is not None else ()


def select_first_semi_hard(anchor, positive, candidates, margin: float = 1.0) -> tf.Tensor:
    """Index of the negative the original keeps per triplet: the first candidate n with
    d2(a, p) < d2(a, n) < d2(a, p) + margin (squared Euclidean distances), else the last.

    Args:
      anchor, positive: float [B, D]; candidates: float [B, C, D]; margin: in squared units,
        as the original compares it (1.0).

    Returns:
      int32 [B] in [0, C).
    """
    candidates = tf.stop_gradient(tf.convert_to_tensor(candidates, tf.float32))
    d_ap = tf.reduce_sum(tf.square(anchor - positive), -1)[:, None]  # [B, 1]
    d_an = tf.reduce_sum(tf.square(anchor[:, None] - candidates), -1)  # [B, C]
    semi = tf.logical_and(d_ap < d_an, d_an < d_ap + margin)
    c = tf.shape(candidates)[1]
    first = tf.argmax(tf.cast(semi, tf.int32), axis=1, output_type=tf.int32)
    return tf.where(tf.reduce_any(semi, axis=1), first, c - 1)


def category_mask(categories, valid) -> tf.Tensor:
    """bool [N, N]: rows i, j are both valid (not padding) and of the same category; the
    pairs among which SketchZooms mines positives and negatives."""
    cat = tf.reshape(tf.cast(categories, tf.int64), [-1])
    ok = tf.reshape(tf.cast(valid, tf.bool), [-1])
    both = tf.logical_and(ok[:, None], ok[None, :])
    return tf.logical_and(tf.equal(cat[:, None], cat[None, :]), both)


class ZoomsTask(Task):
    """SketchZooms descriptors (see module docstring); models: {"zooms": keras.Model}."""

    name = "zooms"
    config_module = family_config
    evaluator_types = (ZoomsEvaluator,)
    serving_type = ZoomsServing

    #: The main job's "CPU s" for this family, its rendering included (2-core AMD EPYC,
    #: AVX-512, 220 GFLOP/s; issue 26, rendering in the family processes).
    main_job_cpu_s = 165.0
    headlines = tuple(
        Headline(
            f"PCK@5% {split}",
            f"{split}/ours/pck@5%",
            (
                ("raw patch", f"{split}/raw_patch/pck@5%"),
                ("shape context", f"{split}/shape_context/pck@5%"),
            ),
        )  # fmt: skip
        for split in ("seen", "unseen")
    )

    # ---- helpers -------------------------------------------------------------------------
    def zoom_kwargs(self, training: bool) -> dict[str, Any]:
        """Arguments of `zoom_views` for this config (augmentations only when training)."""
        z = self.config.zooms
        kw = dict(
            zooms=tuple(float(v) for v in z.zooms),
            base_half_size=float(z.base_half_size),
            reference_size=float(z.reference_size),
            view_size=int(z.view_size),
            antialias=bool(z.antialias),
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
        model = build_zooms_model(
            backbone=m.backbone,
            view_size=int(self.config.zooms.view_size),
            num_views=len(self.config.zooms.zooms),
            descriptor_dim=int(m.descriptor_dim),
            fusion=m.fusion,
            l2_normalize=bool(m.l2_normalize),
            dropout=float(m.dropout),
            head=m.head,
            head_hidden=int(m.head_hidden) or None,
            backbone_kwargs=backbones.backbone_kwargs(m),
            weights_path=m.weights_path or None,
        )
        return {"zooms": model}

    # ---- data ----------------------------------------------------------------------------
    def records_dir(self, split: str) -> str:
        """`<data.root>/<split>` (checked; the error names the command that writes it)."""
        root = self.config.data.root
        return tfrecord.records_dir(
            root,
            split,
            f"zooms: no correspondence records for split {split!r}",
            f"python prepare_data.py --task=zooms --out={root} (synthetic world), or convert "
            "the SketchZooms layout with prepare_data.py --source=sketchzooms",
        )

    def category_ids(self, split: str, which: str) -> list[int]:
        """Category ids of the records of `split` for `which` = seen / unseen / all."""
        classes = list(tfrecord.read_manifest(self.records_dir(split))["classes"])
        seen, unseen = splits.class_split(
            classes, unseen=_as_tuple(self.config.data.unseen_classes), where="zooms"
        )
        names = {"seen": seen, "unseen": unseen, "all": seen + unseen}[which]
        return sorted(classes.index(c) for c in names)

    def pairs(
        self, split: str, training: bool, seed: int, num_points: int, which: str, shards=None
    ):
        """Unbatched pair examples of `split` restricted to seen / unseen / all categories
        (`data.correspondence_batches` fields); `shards`: only those manifest entries."""
        return zooms_data.correspondence_batches(
            self.records_dir(split),
            shards=shards,
            batch_size=1,
            num_points=num_points,
            image_size=int(self.config.data.image_size),
            seed=seed,
            training=training,
            shuffle_buffer=int(self.config.data.shuffle_buffer),
            category_ids=self.category_ids(split, which),
        ).unbatch()

    def train_shards(self) -> list[dict]:
        """Manifest entries of the training shards that may hold seen categories (all of
        them unless the records are grouped by class)."""
        manifest = tfrecord.read_manifest(self.records_dir("train"))
        seen = {manifest["classes"][i] for i in self.category_ids("train", "seen")}
        # Manifest shard entries (not config): "class" only when grouped by class.
        return [s for s in manifest["shards"] if s.get("class") is None or s["class"] in seen]

    def train_input_shards(self) -> int | None:
        # Pair batches are one plain record stream (file sharding works); the original's
        # triplet batching samples negatives of other categories: data sharding only.
        if self.config.data.batching == "triplets":
            return None
        return len(self.train_shards())

    def build_train_dataset(self, global_batch_size, seed, models=None, input_context=None):
        """Batches of zoom views (see `_triplet_dataset` for the triplet batching).

        `input_context` (sharding by file across workers, `loop.choose_input_sharding`):
        this worker reads every `num_input_pipelines`-th training shard from its
        `input_pipeline_id` on, with its own shuffling seed."""
        if self.config.data.batching == "triplets":
            return self._triplet_dataset(global_batch_size, seed)
        shards = None
        if input_context is not None:
            worker, workers = input_context.input_pipeline_id, input_context.num_input_pipelines
            shards = self.train_shards()[worker::workers]
            seed = int(seed) + 1_000_003 * worker
        ds = self.pairs(
            "train", True, seed, int(self.config.data.num_points), "seen", shards=shards
        )
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

    def _triplet_dataset(self, global_batch_size, seed):
        """The original's batches: {"views_a", "views_b": [B, K, S, S, 3], "views_neg":
        [B, C, K, S, S, 3], "category_id": [B], "neg_category_ids": [B, C]} (see module
        docstring). Views are made per triplet, before batching: a batch never holds the
        full-size drawings."""
        classes = list(tfrecord.read_manifest(self.records_dir("train"))["classes"])
        seen = [classes[i] for i in self.category_ids("train", "seen")]
        c = int(self.config.loss.num_candidates)
        ds = zooms_data.correspondence_triplets(
            self.records_dir("train"),
            num_candidates=c,
            image_size=int(self.config.data.image_size),
            seed=seed,
            classes=seen,
            shuffle_buffer=int(self.config.data.shuffle_buffer),
        )
        kw = self.zoom_kwargs(training=True)

        def views(i, t):
            # Anchor, positive and candidates are 2 + C drawings with one point each; every
            # point gets its own jitter / flip / rotation, as in the original.
            images = tf.concat([t["image_a"][None], t["image_b"][None], t["neg_images"]], 0)
            points = tf.concat([t["point_a"][None], t["point_b"][None], t["neg_points"]], 0)
            v = zoom_views(
                images, points[:, None], seed=tf.stack([tf.cast(seed, tf.int64), i]), **kw
            )[:, 0]
            return {
                "views_a": v[0],
                "views_b": v[1],
                "views_neg": v[2:],
                "category_id": t["category_id"],
                "neg_category_ids": t["neg_category_ids"],
            }

        ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)
        ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(global_batch_size, drop_remainder=True).prefetch(2)

    # ---- training ------------------------------------------------------------------------
    def compute_losses(self, models, batch, ctx):
        if "views_neg" in batch:
            return self._candidate_triplet_losses(models["zooms"], batch, ctx)
        m = tf.shape(batch["views_a"])[1]
        # A's and B's points through the model in one call: [2b, M, K, S, S, 3] -> [2b*M, D].
        views = tf.concat([batch["views_a"], batch["views_b"]], 0)
        desc = describe_views(models["zooms"], views, training=True)
        desc = tf.reshape(desc, [-1, tf.shape(desc)[-1]])
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
            loss = losses.mined_triplet_loss(
                desc, ids, desc, ids, mining=cfg.mining, margin=float(cfg.margin),
                distance=cfg.distance, same_set=True, pair_mask=category_mask(cat, mask),
            )  # fmt: skip
            return {"total": ctx.share(loss), "triplet": ctx.share(loss)}
        loss = self._contrastive(desc, ids, cat, mask)
        return {"total": ctx.share(loss), "contrastive": ctx.share(loss)}

    def _candidate_triplet_losses(self, model, batch, ctx):
        """The original's loss on `_triplet_dataset` batches: the first semi-hard candidate
        negative per triplet (squared distances), else the last; then
        `max(||a - p|| - ||a - n|| + margin, 0)` averaged over the triplets (PyTorch's
        `TripletMarginLoss(margin=1.0)`)."""
        margin = float(self.config.loss.margin)
        a = describe_views(model, batch["views_a"], training=True)  # [b, D]
        p = describe_views(model, batch["views_b"], training=True)
        negatives = select_first_semi_hard(
            tf.stop_gradient(a),
            tf.stop_gradient(p),
            describe_views(model, batch["views_neg"], training=False),  # [b, C, D]
            margin,
        )  # [b] candidate index
        views_n = tf.gather(batch["views_neg"], negatives, batch_dims=1)
        n = describe_views(model, views_n, training=True)
        loss = ctx.mean(losses.triplet_loss(a, p, n, margin=margin))
        return {"total": loss, "triplet": loss}

    def _contrastive(self, desc, ids, cat, mask):
        """Per-pair contrastive loss: every (a_i, b_i) match plus, per anchor, the nearest
        same-category non-matching point (a hard negative pair); mean over the pairs."""
        d = losses.pairwise_distances(desc, None, self.config.loss.distance)
        same_cat = category_mask(cat, mask)
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


__all__ = ["ZoomsTask", "category_mask", "select_first_semi_hard"]
