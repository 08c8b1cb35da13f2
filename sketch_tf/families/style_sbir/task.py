"""Task "style_sbir": style-aware sketch-based image retrieval (a sketch says what is wanted,
an exemplar image how it is depicted).

Models (`sketch_tf.models.style`): structure towers (sketch, image) and a style tower with a
content x style classifier. Every training batch (`data.style_triplet_batches`) holds, per
element, an anchor image A (content c, style s), a positive P (style s, another content), a
negative N (another style; content c under `data.negative_rule="same_content"`, any with
"any") and a sketch K of content c. Loss terms, each a replica share of the global-batch mean:

    structure   = triplet mined in-batch (`loss.structure_mining`), sketches K as queries
                  against the structure embeddings of every A, P, N of the global batch,
                  positives = same content (`losses.mined_triplet_loss`, margin
                  `loss.structure_margin`, Euclidean on L2-normalised embeddings)
    style_class = mean cross-entropy of `style_classifier(style(x))` over A, P, N, label
                  content * num_styles + style (stage 1 of the original)
    style_triplet = max(||a - p|| - ||a - n|| + loss.style_margin, 0) on style embeddings
                  (stage 2: same style / other content is positive, so style is decorrelated
                  from content); with `loss.style_mining` mined over every A, P, N of the
                  global batch under the same positive / negative rules
    total = structure_weight * structure + style_class_weight * style_class
            + style_triplet_weight * style_triplet

The recipe is two stages of one config (`config.stages`, run by `train.py`): `classify`
(style_class, plus structure by default) then `triplet` (style_triplet), initialised from
`classify`; which stage trains the structure branch is `loss.structure_weight` of each stage.
Models whose terms all weigh 0 are left out of the update (`trainable_models`).

With frozen trunks (`model.*.freeze_trunk`) and `data.feature_cache=True`, the trunks'
features are computed once per image and cached (`sketch_tf.data.cache`) and only the heads
train; exports always hold the whole towers. Evaluation: `sketch_tf.families.style_sbir.
evaluate`; signatures: `sketch_tf.families.style_sbir.serving`.
"""

from __future__ import annotations

import os

import ml_collections
import tensorflow as tf

from sketch_tf import losses
from sketch_tf.data import tfrecord
from sketch_tf.families.cached_towers import CachedTowers, precompute
from sketch_tf.families.style_sbir import config as family_config
from sketch_tf.families.style_sbir import data as style_data
from sketch_tf.families.style_sbir.evaluate import StyleSbirEvaluator
from sketch_tf.families.style_sbir.serving import StyleSbirRetrieval, StyleSbirServing
from sketch_tf.models import backbones
from sketch_tf.models import style as style_models
from sketch_tf.train.tasks import Headline, LossContext, Task, synthetic_prepare_command

#: Image roles of a batch that the gallery towers embed (the sketch K goes to the sketch tower).
GALLERY_ROLES = ("anchor", "positive", "negative")


def _prepare_command(config: ml_collections.ConfigDict, split: str) -> str:
    root = config.data.root
    if "synthetic" in config.data:  # the synthetic variants' section only (not a default)
        return synthetic_prepare_command(config, "style")
    if "pacs" in root:
        return (
            "python prepare_data.py --source=folders --root=../shared/data/pacs "
            "--style_domains=art_painting,cartoon,photo --test_fraction=0.3 "
            f"--out={root}"
        )
    return f"python prepare_data.py --source=style --root=<dataset folder> --out={root}/{split}"


def _tower_kwargs(section: ml_collections.ConfigDict) -> dict:
    """`build_tower` arguments of a `model.structure` / `model.style` section."""
    return {
        "backbone": section.backbone,
        "backbone_kwargs": backbones.backbone_kwargs(section),
        "projection_dim": int(section.projection_dim),
        "head_hidden": tuple(int(w) for w in section.head_hidden),
        "freeze_trunk": bool(section.freeze_trunk),
    }


class StyleSbirTask(Task):
    """Structure + style branches, sketch + exemplar queries (see module docstring)."""

    name = "style_sbir"
    config_module = family_config
    evaluator_types = (StyleSbirEvaluator,)
    serving_type = StyleSbirServing
    retrieval_type = StyleSbirRetrieval

    #: The main job's "CPU s" for this family, its rendering included (2-core AMD EPYC,
    #: AVX-512, 220 GFLOP/s; issue 26, rendering in the family processes).
    main_job_cpu_s = 119.0
    headlines = (
        Headline(
            "sketch + style mAP (content and style)",
            "sketch_style_map",
            (
                ("random ranking", "random/sketch_style_map"),
                ("structure only (alpha=1)", "structure_only/sketch_style_map"),
                ("style only (alpha=0)", "style_only/sketch_style_map"),
                ("non-learned (HOG + colour/texture)", "non_learned/sketch_style_map"),
            ),
        ),
        Headline(
            "sketch-only mAP (content), mean over styles",
            "sketch_map",
            (("random ranking", "random/sketch_map"), ("HOG", "hog/sketch_map")),
        ),
    )

    # ---- records -------------------------------------------------------------------------
    def records_dir(self, which: str) -> str:
        """The training (`which="train"`) or evaluation (`"test"`) record set, checked."""
        return self.train_test_records(which, lambda split: _prepare_command(self.config, split))

    def styles(self) -> list[str]:
        """Gallery style names (sorted): `data.styles`, or every domain of the training
        records but the sketch domain. Style label = index in this list."""
        d = self.config.data
        if tuple(d.styles):
            return sorted(d.styles)
        manifest = tfrecord.read_manifest(self.records_dir("train"))
        domains = manifest["counts"]["per_domain_class"]
        return sorted(x for x in domains if x != d.sketch_domain)

    def contents(self) -> list[str]:
        """Content class names: the training records' class list (label = index)."""
        return list(tfrecord.read_manifest(self.records_dir("train"))["classes"])

    def sketch_records(self, which: str) -> tuple[str, dict[int, int]]:
        """(record folder, {content id: class id there}) of the sketches of `which`:
        `data.train_sketches` / `data.query_sketches` when set (another record folder, its
        classes matched to the contents by name or `data.sketch_class_names`), else the
        sketch domain of the train / test records themselves (the same class ids)."""
        d = self.config.data
        folder = d.train_sketches if which == "train" else d.query_sketches
        contents = self.contents()
        unknown = sorted(set(d.classes) - set(contents))
        if unknown:
            raise ValueError(f"style_sbir: data.classes {unknown} are not classes of {contents}")
        wanted = {contents.index(c) for c in d.classes} if tuple(d.classes) else None
        if not folder:
            ids = range(len(contents)) if wanted is None else sorted(wanted)
            return self.records_dir(which), {c: c for c in ids}
        if not os.path.isfile(os.path.join(folder, "manifest.json")):
            key = "train_sketches" if which == "train" else "query_sketches"
            raise FileNotFoundError(
                f"style_sbir: data.{key}={folder} holds no records (manifest.json); e.g. "
                "python prepare_data.py --source=quickdraw --root=../shared/data/quickdraw "
                f"--categories=... --out={folder}"
            )
        manifest = tfrecord.read_manifest(folder)
        names = dict(d.sketch_class_names.to_dict())
        return folder, style_data.sketch_classes_of(manifest, contents, wanted, names)

    def style_index(self, which: str) -> style_data.StyleIndex:
        """`style_data.StyleIndex` of the train / test records (read once per task)."""
        memo = self.__dict__.setdefault("_indexes", {})
        if which not in memo:
            d = self.config.data
            names = dict(d.sketch_class_names.to_dict())
            own = which == "train" and not d.train_sketches
            memo[which] = style_data.StyleIndex(
                self.records_dir(which), self.styles(), d.sketch_domain,
                classes=tuple(d.classes) or None,
                sketch_dir=None if own else self.sketch_records(which)[0],
                sketch_class_names=names,
            )  # fmt: skip
            if memo[which].classes != self.contents():
                raise ValueError(
                    f"style_sbir: {self.records_dir(which)} has classes {memo[which].classes}, "
                    f"the training records {self.contents()}: prepare both splits together"
                )
        return memo[which]

    # ---- model ---------------------------------------------------------------------------
    def build_models(self):
        m = self.config.model
        return style_models.build_style_models(
            int(self.config.data.image_size),
            len(self.contents()),
            len(self.styles()),
            structure=_tower_kwargs(m.structure),
            style=_tower_kwargs(m.style),
            shared_structure=bool(m.structure.shared),
        )

    def trainable_models(self, models):
        # A model no non-zero loss term reaches gets no gradient: leave it out of the update.
        models = super().trainable_models(models)
        w = self.config.loss
        unused = set()
        if float(w.structure_weight) == 0:
            unused |= {"structure_tower", *style_models.STRUCTURE_MODELS}
        if float(w.style_class_weight) == 0:
            unused.add("style_classifier")
        if float(w.style_class_weight) == 0 and float(w.style_triplet_weight) == 0:
            unused.add("style_tower")
        return {k: v for k, v in models.items() if k not in unused}

    # ---- feature cache -------------------------------------------------------------------
    def uses_feature_cache(self) -> bool:
        return bool(self.config.data.feature_cache)

    def towers(self, models) -> dict:
        """{"structure_sketch", "structure_image", "style": tower} (shared towers repeat)."""
        return {
            "structure_sketch": style_models.structure_sketch_tower(models),
            "structure_image": style_models.structure_image_tower(models),
            "style": models["style_tower"],
        }

    def feature_caches(self, models, which: str, log=print) -> dict:
        """{"structure_sketch", "structure_image", "style": `cache.FeatureCache`} of the frozen
        trunks over the `which` ("train" / "test") records: sketches for the first, the gallery
        styles for the others (both gallery caches in one pass over the images, which runs the
        blocks the two trunks share once); computed on first use.

        Raises:
          ValueError: a tower's trunk has trainable weights.
        """
        d = self.config.data
        path = self.records_dir(which)
        where, class_of = self.sketch_records(which)
        names = tfrecord.read_manifest(where)["classes"]
        sketch_classes = [names[i] for i in sorted(class_of.values())]
        # One image stream per records folder: the gallery images' two trunks run in one pass.
        return {
            **self._trunk_caches(
                models, ("structure_sketch",), where, [d.sketch_domain], sketch_classes, log
            ),
            **self._trunk_caches(
                models, ("structure_image", "style"), path, self.styles(),
                tuple(d.classes) or None, log,
            ),
        }  # fmt: skip

    def gallery_caches(self, models, records_dir: str, classes=None, log=print) -> dict:
        """{"structure_image", "style": `cache.FeatureCache`} of the frozen trunks over every
        image of the style domains and of `classes` (names; None: all) in the labelled-image
        folder `records_dir` (a retrieval gallery), computed on first use in that folder's
        cache (the test records' cache for the test gallery: the test gallery of the run's
        `data.classes` is the evaluation's gallery, whose caches are reused as they are).

        Raises:
          ValueError: a tower's trunk has trainable weights.
        """
        roles = ("structure_image", "style")
        return self._trunk_caches(models, roles, records_dir, self.styles(), classes, log)

    def _trunk_caches(self, models, roles, path, domains, classes, log) -> dict:
        """{role: `cache.FeatureCache`} of the trunks of the `roles` towers (roles of `towers`)
        over the images of `domains` and `classes` (None: all) in the records folder `path`,
        those missing computed in one pass (`CachedTowers.features`, memoised by images)."""
        d = self.config.data
        towers = self.towers(models)
        specs = {}
        for role in roles:
            section = self.config.model.style if role == "style" else self.config.model.structure
            specs[role] = {
                "backbone": section.backbone,
                "backbone_kwargs": section.backbone_kwargs.to_dict(),
            }
        return self._cached_towers().features(
            {r: towers[r] for r in roles}, records_dir=path, domains=domains, classes=classes,
            cache_dir=d.cache_dir, specs=specs,
            is_sketch=roles == ("structure_sketch",), image_size=int(d.image_size),
            batch_size=int(self.config.eval.batch_size), log=log,
        )  # fmt: skip

    def _cached_towers(self) -> CachedTowers:
        return self.__dict__.setdefault(
            "_towers", CachedTowers("style_sbir", "model.structure/style.freeze_trunk")
        )

    def heads(self, models) -> dict:
        """{role: the tower's head (trunk features -> embedding)} for the roles of `towers`."""
        return {role: self._cached_towers().head(t) for role, t in self.towers(models).items()}

    def precompute(self, models, log=print) -> dict[str, str]:
        return precompute(self, models, log)

    # ---- data ----------------------------------------------------------------------------
    def build_train_dataset(self, global_batch_size, seed, models=None):
        d = self.config.data
        keys_mode = self.uses_feature_cache()
        batches = style_data.style_triplet_batches(
            self.style_index("train"),
            global_batch_size,
            seed=seed,
            negative_rule=d.negative_rule,
            output="keys" if keys_mode else "images",
            image_size=int(d.image_size),
            training=bool(d.train_augment),
            shuffle_buffer=int(d.shuffle_buffer),
        )
        if not keys_mode:
            return batches
        if models is None:
            raise ValueError("style_sbir: data.feature_cache needs the models to build the cache")
        caches = self.feature_caches(models, "train")
        sketch = caches["structure_sketch"].lookup("style_sbir training sketches")
        structure = caches["structure_image"].lookup("style_sbir training images (structure)")
        style = caches["style"].lookup("style_sbir training images (style)")

        def to_features(b):  # the keys stay in the batch (which images these are)
            out = {"sketch_features": sketch(b["sketch_key"]), **b}
            for role in GALLERY_ROLES:
                out[f"{role}_structure_features"] = structure(b[f"{role}_key"])
                out[f"{role}_style_features"] = style(b[f"{role}_key"])
            return out

        return batches.map(to_features, num_parallel_calls=tf.data.AUTOTUNE)

    # ---- training ------------------------------------------------------------------------
    def _embed_batch(self, models, batch, training: bool):
        """(sketch structure emb [B, E], {role: structure emb}, {role: style emb})."""
        w = self.config.loss
        need_structure = float(w.structure_weight) > 0
        need_style = float(w.style_class_weight) > 0 or float(w.style_triplet_weight) > 0
        structure, style = {}, {}
        if "sketch_features" in batch:
            heads = self.heads(models)
            sketch = heads["structure_sketch"](batch["sketch_features"], training=training)
            for role in GALLERY_ROLES:
                if need_structure:
                    structure[role] = heads["structure_image"](
                        batch[f"{role}_structure_features"], training=training
                    )
                if need_style:
                    style[role] = heads["style"](batch[f"{role}_style_features"], training=training)
            return sketch, structure, style
        towers = self.towers(models)
        sketch = towers["structure_sketch"](batch["sketch"], training=training)
        for role in GALLERY_ROLES:
            if need_structure:
                structure[role] = towers["structure_image"](batch[role], training=training)
            if need_style:
                style[role] = towers["style"](batch[role], training=training)
        return sketch, structure, style

    def compute_losses(self, models, batch, ctx: LossContext):
        w = self.config.loss
        sketch, structure, style = self._embed_batch(models, batch, training=True)
        out = {}
        total = tf.constant(0.0)
        if float(w.structure_weight) > 0:
            keys = tf.concat([structure[r] for r in GALLERY_ROLES], 0)
            key_labels = tf.concat(
                [batch["content_id"], batch["positive_content_id"], batch["negative_content_id"]],
                0,
            )
            out["structure"] = ctx.share(
                losses.mined_triplet_loss(
                    ctx.all_gather(sketch),
                    ctx.all_gather(batch["content_id"]),
                    ctx.all_gather(keys),
                    ctx.all_gather(key_labels),
                    mining=w.structure_mining,
                    margin=float(w.structure_margin),
                )
            )
            total += float(w.structure_weight) * out["structure"]
        if float(w.style_class_weight) > 0:
            num_styles = len(self.styles())
            labels = {
                "anchor": batch["content_id"] * num_styles + batch["style_id"],
                "positive": batch["positive_content_id"] * num_styles + batch["style_id"],
                "negative": batch["negative_content_id"] * num_styles + batch["negative_style_id"],
            }
            ce = tf.add_n(
                [
                    tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=labels[r],
                        logits=models["style_classifier"](style[r], training=True),
                    )
                    for r in GALLERY_ROLES
                ]
            ) / float(len(GALLERY_ROLES))
            out["style_class"] = ctx.mean(ce)
            total += float(w.style_class_weight) * out["style_class"]
        if float(w.style_triplet_weight) > 0 and w.style_mining:
            out["style_triplet"] = ctx.share(self._mined_style_triplet(style, batch, ctx))
            total += float(w.style_triplet_weight) * out["style_triplet"]
        elif float(w.style_triplet_weight) > 0:
            out["style_triplet"] = ctx.mean(
                losses.triplet_loss(
                    style["anchor"], style["positive"], style["negative"],
                    margin=float(w.style_margin),
                )
            )  # fmt: skip
            total += float(w.style_triplet_weight) * out["style_triplet"]
        out["total"] = total
        return out

    def _mined_style_triplet(self, style, batch, ctx):
        """The style triplet mined over every A, P, N of the global batch (`loss.style_mining`):
        positives = same style and another content, negatives = another style (of the same
        content under `data.negative_rule="same_content"`)."""
        w = self.config.loss
        emb = ctx.all_gather(tf.concat([style[r] for r in GALLERY_ROLES], 0))
        styles = ctx.all_gather(
            tf.concat([batch["style_id"], batch["style_id"], batch["negative_style_id"]], 0)
        )
        contents = ctx.all_gather(
            tf.concat(
                [batch["content_id"], batch["positive_content_id"], batch["negative_content_id"]],
                0,
            )
        )
        same_style = tf.equal(styles[:, None], styles[None, :])
        same_content = tf.equal(contents[:, None], contents[None, :])
        if self.config.data.negative_rule == "same_content":
            allowed = (same_style & ~same_content) | (~same_style & same_content)
        else:
            allowed = ~(same_style & same_content)
        return losses.mined_triplet_loss(
            emb, styles, emb, styles, mining=w.style_mining, margin=float(w.style_margin),
            same_set=True, pair_mask=allowed,
        )  # fmt: skip


__all__ = ["StyleSbirTask"]
