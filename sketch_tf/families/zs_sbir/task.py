"""Task "zs_sbir": zero-shot sketch-based image retrieval with a gradient reversal layer.

Training (seen classes only): a batch holds triplets (sketch of class a, photo of a, photo of
n != a). Loss per replica share of the global-batch mean:

    total   = triplet_weight * triplet + domain_weight * domain
    triplet = max(||s - p+|| - ||s - p-|| + margin, 0)      (Euclidean, not squared)
    domain  = BCE(p+) + BCE(p-) + BCE(s)     (the SUM of the three batch-mean BCEs)
    BCE(e)  = batch mean of BCE(domain_classifier(GRL(e)), photo ? 1 : 0)

as the original's `domain_loss_ratio * (BCE(p+) + BCE(p-)) + domain_loss_ratio * BCE(s)`
(train.py), so `loss.domain_weight` is its `domain_loss_ratio` (0.5). `model.domain_batches`
says whether the classifier sees the three embedding batches at once ("joint") or one after the
other ("separate", the original: per-domain BatchNorm statistics), `models.zs_sbir.domain_logits`.

Negatives: "random" / "class_embedding" pick the negative photo's class in the input pipeline
(`data.triplet_batches`; class embeddings drawn with `data.negative_sampling`:
"inverse_distance" as the original, or "softmax" with `data.negative_temperature`); "mined"
ignores it and mines in-batch over the *global* batch (sketches as queries against every photo
of the batch, `losses.mined_triplet_loss`). `data.train_augment=False` trains on the evaluation
preprocessing (no augmentation, as the original).

The GRL lambda is set before every step from `grl_lambda(step // steps_per_epoch, ...)`, where
`steps_per_epoch` is `train.steps_per_epoch`, or, with `data.epoch_from_sketches=True`, one pass
over the seen training sketches: ``num_sketches // train.batch_size`` from the manifest (the
original's `len(DataLoader(sketches, batch_size, drop_last=True))`), see `steps_per_epoch()`.

Evaluation (unseen classes only, `sketch_tf.families.zs_sbir.evaluate`): gallery = every
photo of the unseen classes in the test records, queries = every sketch of the unseen
classes; metrics of `eval.retrieval` next to a random ranking; retrieval grid PNG and
projector files in `<workdir>/eval`. Signatures: `sketch_tf.families.zs_sbir.serving`.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from sketch_tf import losses
from sketch_tf.data import splits, tfrecord
from sketch_tf.families.cached_towers import CachedTowers, precompute
from sketch_tf.families.zs_sbir import config as family_config
from sketch_tf.families.zs_sbir import data as zs_data
from sketch_tf.families.zs_sbir.evaluate import ZsSbirEvaluator
from sketch_tf.families.zs_sbir.serving import ZsSbirRetrieval, ZsSbirServing
from sketch_tf.models import backbones
from sketch_tf.models import zs_sbir as zs_models
from sketch_tf.train.schedules import grl_lambda
from sketch_tf.train.tasks import (
    LossContext,
    Task,
    headlines_with_baselines,
    synthetic_prepare_command,
)


def _prepare_command(config: ml_collections.ConfigDict, split: str) -> str:
    root = config.data.root
    if "synthetic" in config.data:  # the synthetic variants' section only (not a default)
        return synthetic_prepare_command(config, "zs_sbir")
    if "pacs" in root:
        pacs = "../shared/data/pacs"
        return f"python prepare_data.py --source=folders --root={pacs} --out={root}/{split}"
    return f"python prepare_data.py --source=folders --root=<dataset folder> --out={root}/{split}"


class ZsSbirTask(Task):
    """Sketch/photo towers + GRL domain classifier (see module docstring)."""

    name = "zs_sbir"
    config_module = family_config
    evaluator_types = (ZsSbirEvaluator,)
    serving_type = ZsSbirServing
    retrieval_type = ZsSbirRetrieval

    #: The main job's "CPU s" for this family, its rendering included (2-core AMD EPYC,
    #: AVX-512, 220 GFLOP/s; issue 26, rendering in the family processes).
    main_job_cpu_s = 83.0
    headlines = headlines_with_baselines(
        (("mAP@all unseen", "map_all"), ("P@100 unseen", "p_100")),
        (
            ("random ranking", "random_{key}"),
            ("HOG", "hog_{key}"),
            ("raw pixels", "raw_pixels_{key}"),
        ),
    )

    # ---- model ---------------------------------------------------------------------------
    def build_models(self):
        m = self.config.model
        return zs_models.build_zs_sbir_models(
            m.backbone,
            int(self.config.data.image_size),
            shared=bool(m.shared),
            projection_dim=int(m.projection_dim),
            normalize=bool(m.normalize),
            backbone_kwargs=backbones.backbone_kwargs(m),
            freeze_trunk=bool(m.freeze_trunk),
            photo_input=m.photo_input,
            edge_kwargs=dict(m.photo_edges.to_dict()),
            domain_hidden=int(m.domain_hidden),
            domain_layers=int(m.domain_layers),
            domain_bn_momentum=float(m.domain_bn_momentum),
            domain_bn_epsilon=float(m.domain_bn_epsilon),
        )

    def trainable_models(self, models):
        # Without the domain term the classifier gets no gradient: leave it out of the update.
        models = super().trainable_models(models)
        if float(self.config.loss.domain_weight) == 0.0:
            models = {k: v for k, v in models.items() if k != "domain_classifier"}
        return models

    # ---- data ----------------------------------------------------------------------------
    def records_dir(self, which: str) -> str:
        """The training (`which="train"`) or evaluation (`"test"`) record set, checked."""
        return self.train_test_records(which, lambda split: _prepare_command(self.config, split))

    def class_split(self, classes: list[str]) -> tuple[list[str], list[str]]:
        """(seen, unseen) class names for the dataset's class list."""
        d = self.config.data
        seen, unseen = splits.class_split(
            classes, unseen=d.unseen_classes, unseen_file=d.unseen_classes_file,
            seen=d.seen_classes, where="zs_sbir",
        )  # fmt: skip
        if not unseen:
            raise ValueError("zs_sbir: no unseen classes: set data.unseen_classes(_file)")
        return seen, unseen

    def uses_feature_cache(self) -> bool:
        """True when training and evaluation read cached trunk features (`data.feature_cache`)."""
        return bool(self.config.data.feature_cache)

    def feature_caches(self, models, which: str, log=print) -> dict:
        """{"sketch", "photo": `cache.FeatureCache`} of the frozen trunks of the sketch and
        photo towers over the `which` ("train" / "test") records of the split's classes
        (seen for train, unseen for test), computed on first use (`sketch_tf.data.cache`).

        Raises:
          ValueError: a tower's trunk has trainable weights (model.freeze_trunk=False).
        """
        path = self.records_dir(which)
        seen, unseen = self.class_split(tfrecord.read_manifest(path)["classes"])
        classes = seen if which == "train" else unseen
        return {
            role: self._trunk_cache(models, role, path, classes, log)
            for role in ("sketch", "photo")
        }

    def gallery_caches(self, models, records_dir: str, classes=None, log=print) -> dict:
        """{"photo": `cache.FeatureCache`} of the frozen photo trunk over every photo of
        `classes` (names; None: all) in the labelled-image folder `records_dir` (a retrieval
        gallery), computed on first use in that folder's cache (the test records' cache for
        the test gallery).

        Raises:
          ValueError: the photo tower's trunk has trainable weights.
        """
        return {"photo": self._trunk_cache(models, "photo", records_dir, classes, log)}

    def _trunk_cache(self, models, role, path, classes, log):
        """The `CachedTowers.features` of the `role` ("sketch" / "photo") tower's trunk over
        the `role` domain images of `classes` (None: all) in the records folder `path`."""
        d, m = self.config.data, self.config.model
        towers = self.__dict__.setdefault("_towers", CachedTowers("zs_sbir", "model.freeze_trunk"))
        domain = d.sketch_domain if role == "sketch" else d.photo_domain
        tower = (zs_models.sketch_tower if role == "sketch" else zs_models.photo_tower)(models)
        spec = {
            "backbone": m.backbone,
            "backbone_kwargs": m.backbone_kwargs.to_dict(),
            "photo_input": m.photo_input if role == "photo" else "photo",
            "photo_edges": m.photo_edges.to_dict() if role == "photo" else {},
        }
        return towers.features(
            {role: tower}, records_dir=path, domains=[domain], classes=classes,
            cache_dir=d.cache_dir, specs={role: spec},
            is_sketch=role == "sketch", image_size=int(d.image_size),
            batch_size=int(self.config.eval.batch_size), log=log,
        )[role]  # fmt: skip

    def precompute(self, models, log=print) -> dict[str, str]:
        return precompute(self, models, log)

    def tower_heads(self, models) -> dict:
        """{"sketch", "photo": the towers' heads (features -> embeddings)}, built once."""
        towers = self.__dict__.setdefault("_towers", CachedTowers("zs_sbir", "model.freeze_trunk"))
        return {
            "sketch": towers.head(zs_models.sketch_tower(models)),
            "photo": towers.head(zs_models.photo_tower(models)),
        }

    def build_train_dataset(self, global_batch_size, seed, models=None):
        d = self.config.data
        path = self.records_dir("train")
        manifest = tfrecord.read_manifest(path)
        seen, _ = self.class_split(manifest["classes"])
        negatives = self.config.loss.negatives
        # A config.json saved before data.negative_sampling existed has "softmax" (migrate).
        sampling = d.negative_sampling
        triplets = zs_data.triplet_batches(
            path,
            global_batch_size,
            image_size=int(d.image_size),
            seed=seed,
            negatives="random" if negatives == "mined" else negatives,
            class_embeddings=d.class_embeddings or None,
            negative_sampling=sampling,
            temperature=float(d.negative_temperature) if sampling == "softmax" else None,
            anchor_sampling=d.anchor_sampling,
            classes=seen,
            sketch_domain=d.sketch_domain,
            photo_domain=d.photo_domain,
            training=bool(d.train_augment),  # False: no augmentation
            shuffle_buffer=int(d.shuffle_buffer),
            output="keys" if self.uses_feature_cache() else "images",
        )
        if not self.uses_feature_cache():
            return triplets
        if models is None:
            raise ValueError("zs_sbir: data.feature_cache needs the models to build the cache")
        caches = self.feature_caches(models, "train")
        sketch = caches["sketch"].lookup("zs_sbir training sketches")
        photo = caches["photo"].lookup("zs_sbir training photos")

        def to_features(b):  # the keys stay in the batch (which images these are)
            return {
                "sketch_features": sketch(b["sketch_key"]),
                "photo_pos_features": photo(b["photo_pos_key"]),
                "photo_neg_features": photo(b["photo_neg_key"]),
                **b,
            }

        return triplets.map(to_features, num_parallel_calls=tf.data.AUTOTUNE)

    def steps_per_epoch(self) -> int:
        """Training steps per epoch, the clock of the GRL schedule (and `schedule/epoch`).

        `train.steps_per_epoch`, or with `data.epoch_from_sketches=True` one pass over the
        training sketches of the seen classes: ``num_sketches // train.batch_size`` from the
        training manifest's counts (at least 1), computed once per task.
        """
        d = self.config.data
        if not d.epoch_from_sketches:
            return int(self.config.train.steps_per_epoch)
        cached = getattr(self, "_steps_per_epoch", None)
        if cached is None:
            manifest = tfrecord.read_manifest(self.records_dir("train"))
            seen, _ = self.class_split(manifest["classes"])
            # Manifest counts (not config): a domain or class without records is absent.
            per_class = manifest["counts"]["per_domain_class"].get(d.sketch_domain, {})
            sketches = sum(int(per_class.get(c, 0)) for c in seen)  # (manifest, as above)
            batch = int(self.config.train.batch_size)
            if sketches < batch:
                raise ValueError(
                    f"zs_sbir: data.epoch_from_sketches: {sketches} training sketches of the "
                    f"seen classes are fewer than train.batch_size={batch}"
                )
            cached = self._steps_per_epoch = sketches // batch
        return cached

    # ---- training ------------------------------------------------------------------------
    def compute_losses(self, models, batch, ctx: LossContext):
        cfg = self.config.loss
        if "sketch_features" in batch:  # cached trunk features: run the heads only
            heads = self.tower_heads(models)
            s = heads["sketch"](batch["sketch_features"], training=True)
            p = heads["photo"](batch["photo_pos_features"], training=True)
            n = heads["photo"](batch["photo_neg_features"], training=True)
        else:
            s = zs_models.sketch_tower(models)(batch["sketch"], training=True)
            p = zs_models.photo_tower(models)(batch["photo_pos"], training=True)
            n = zs_models.photo_tower(models)(batch["photo_neg"], training=True)
        if cfg.negatives == "mined":
            # Sketches of the whole global batch against all its photos (both columns).
            keys = ctx.all_gather(tf.concat([p, n], 0))
            key_labels = ctx.all_gather(tf.concat([batch["class_id"], batch["neg_class_id"]], 0))
            triplet = ctx.share(
                losses.mined_triplet_loss(
                    ctx.all_gather(s),
                    ctx.all_gather(batch["class_id"]),
                    keys,
                    key_labels,
                    mining=cfg.mining,
                    margin=float(cfg.margin),
                )
            )
        else:
            triplet = ctx.mean(losses.triplet_loss(s, p, n, margin=float(cfg.margin)))
        out = {"triplet": triplet}
        total = float(cfg.triplet_weight) * triplet
        if float(cfg.domain_weight) > 0:
            # Order p+, p-, s as the original's three calls (it matters for "separate": the
            # BatchNorm moving statistics are updated in this order).
            logits = zs_models.domain_logits(
                models["domain_classifier"],
                [p, n, s],
                self.config.model.domain_batches,
                training=True,
            )
            b = tf.shape(s)[0]
            labels = tf.concat([tf.ones([2 * b]), tf.zeros([b])], 0)  # 1 = photo
            bce = tf.reshape(losses.domain_loss(tf.reshape(logits, [-1]), labels), [3, b])
            # Sum over the three domains of each batch mean (not their mean), as the original.
            domain = ctx.mean(tf.reduce_sum(bce, axis=0))
            out["domain"] = domain
            total += float(cfg.domain_weight) * domain
        out["total"] = total
        return out

    def grl_lambda_at(self, step: int) -> float:
        """GRL lambda before training step `step` (0-based): `grl_lambda` of its epoch."""
        g = self.config.grl
        epoch = int(step) // self.steps_per_epoch()
        return grl_lambda(
            epoch,
            g.schedule,
            start_epoch=int(g.start_epoch),
            threshold_epoch=int(g.threshold_epoch),
            value=float(g.value),
        )

    def schedule_values(self, models, step):
        lam = self.grl_lambda_at(step)
        zs_models.set_grl_lambda(models, lam)
        return {
            "grl_lambda": lam,
            "epoch": float(int(step) // self.steps_per_epoch()),
        }


__all__ = ["ZsSbirTask"]
