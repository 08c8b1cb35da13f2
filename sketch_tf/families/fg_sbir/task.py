"""Task "fg_sbir": fine-grained (instance-level) sketch-based image retrieval.

A sketch must retrieve the image of the very object it was drawn from among images of
look-alike objects (QMUL Shoes / Chairs, Sketchy's fine-grained benchmark). Records are
labelled images (`prepare_data.py --source=qmul`, or the synthetic world): a sketch domain and
an image domain (`data.image_domain`: QMUL's edge maps, or photos) paired by `instance_id`;
a sketch may carry its dataset's human judgements (`schema.PREFERENCE_PAIRS`).

Towers (`sketch_tf.models.fg_sbir`): HED's VGG16 up to a split point, then the trained part.
With `data.feature_cache` the frozen part runs once per image (and once per mirrored image)
and its maps are cached beside the records (`sketch_tf.data.cache`, float16); the training
batches then hold maps instead of images. Either way a batch row is

    (sketch of object o, image of o, image of a negative object n, a flip bit, one crop
     offset per image)

drawn by `build_train_dataset`: every global batch holds distinct objects (a permutation of
the training objects cut into batches, reshuffled every epoch), the flip mirrors the whole row
(`data.flip="pair"`: a mirrored sketch still matches its mirrored image), and each image gets
its own random `data.crop_size` window of its split-point map (`crop_maps`), in the cached and
the uncached path alike, so both give the same losses.

Loss per replica share of the global-batch mean:

    total    = in_batch + annotated_weight * annotated
    in_batch = triplet mined over the global batch (`loss.mining`): anchors = the sketches,
               keys = every image of the batch (true matches and negatives), positive = the
               image of the same object (`losses.mined_triplet_loss`)
    annotated = max(||s - p|| - ||s - n|| + margin, 0), n drawn among the objects the
               dataset's human judgements compared with this sketch (all of them less alike
               than its own object), a random other object when there are none

Evaluation (`sketch_tf.families.fg_sbir.evaluate`): every sketch of the test split ranks every
image of the split; acc@K, mean rank, next to HOG, raw pixels and a random ranking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ml_collections
import numpy as np
import tensorflow as tf

from sketch_tf import losses
from sketch_tf.data import cache, pipeline, schema, tfrecord
from sketch_tf.families import cached_towers
from sketch_tf.families.fg_sbir import config as family_config
from sketch_tf.families.fg_sbir.evaluate import FgSbirEvaluator
from sketch_tf.families.fg_sbir.serving import FgSbirRetrieval, FgSbirServing
from sketch_tf.models import backbones
from sketch_tf.models import fg_sbir as fg_models
from sketch_tf.train.tasks import (
    LossContext,
    Task,
    headlines_with_baselines,
    synthetic_prepare_command,
)


@dataclass
class PairedSplit:
    """The objects of one split, each an image with one or more sketches.

    Attributes:
      records_dir: the records folder.
      instance_ids: str [N] object ids (the image records' `instance_id`), record order.
      image_bytes: object [N] encoded images. image_keys: int64 [N] cache keys.
      class_ids: int64 [N].
      sketch_bytes: object [M] encoded sketches. sketch_keys: int64 [M].
      sketch_objects: int64 [M] row of each sketch's object.
      sketch_rows: int32 [N, K] rows of each object's sketches, padded with the first.
      sketch_counts: int32 [N].
      negatives: int32 [N, L] objects the dataset's judgements compared with each object's
        sketches (never the object itself), padded. negative_counts: int32 [N] (0 = none).
    """

    records_dir: str
    instance_ids: np.ndarray
    image_bytes: np.ndarray
    image_keys: np.ndarray
    class_ids: np.ndarray
    sketch_bytes: np.ndarray
    sketch_keys: np.ndarray
    sketch_objects: np.ndarray
    sketch_rows: np.ndarray
    sketch_counts: np.ndarray
    negatives: np.ndarray
    negative_counts: np.ndarray


def _padded(lists: list[list[int]], fill_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int lists -> (int32 [N, max(1, longest)] padded with each list's first value or
    0, int32 [N] lengths)."""
    width = max([1] + [len(x) for x in lists])
    out = np.zeros([len(lists), width], np.int32)
    for i, x in enumerate(lists):
        if x:
            out[i, : len(x)] = x
            out[i, len(x) :] = x[0] if fill_first else 0
    return out, np.array([len(x) for x in lists], np.int32)


def read_pairs(
    records_dir: str, sketch_domain: str, image_domain: str, classes=None
) -> PairedSplit:
    """Pairs the sketch and image records of a labelled-image folder by `instance_id`.

    Raises:
      ValueError naming the folder when an image instance id repeats, a sketch has no image
      of its instance, or either domain is empty.
    """
    manifest = tfrecord.read_manifest(records_dir, kind=schema.KIND_LABELLED_IMAGE)
    names = manifest["classes"]
    unknown = sorted(set(classes or ()) - set(names))
    if unknown:
        raise ValueError(f"fg_sbir: {records_dir}: classes {unknown} not in {names}")
    records = pipeline.labelled_records(
        records_dir, domains=[sketch_domain, image_domain], classes=list(classes or ()) or None
    )
    images: dict[str, tuple] = {}
    sketches: list[tuple] = []
    for r in records.as_numpy_iterator():
        iid = r[schema.INSTANCE_ID].decode("utf-8")
        domain = r[schema.DOMAIN].decode("utf-8")
        if domain == image_domain:
            if iid in images:
                raise ValueError(
                    f"fg_sbir: {records_dir}: two {image_domain!r} records of instance {iid!r} "
                    "(each object needs exactly one gallery image)"
                )
            images[iid] = (r[schema.IMAGE], int(r[schema.CLASS_ID]))
        if domain == sketch_domain:
            pairs = np.asarray(r[schema.PREFERENCE_PAIRS], np.int64).reshape(-1, 2)
            sketches.append((iid, r[schema.IMAGE], pairs))
    if not images or not sketches:
        raise ValueError(
            f"fg_sbir: {records_dir}: {len(sketches)} {sketch_domain!r} and {len(images)} "
            f"{image_domain!r} records of classes {list(classes) or 'all'}; both are needed"
        )
    ids = list(images)
    row_of = {iid: i for i, iid in enumerate(ids)}
    # Judgements name objects by integer instance id (QMUL: the index in the source file).
    row_of_int = {int(iid): i for i, iid in enumerate(ids) if iid.isdigit()}
    orphans = [iid for iid, _, _ in sketches if iid not in row_of]
    if orphans:
        raise ValueError(
            f"fg_sbir: {records_dir}: {len(orphans)} sketches have no {image_domain!r} record "
            f"of their instance (e.g. {orphans[:3]})"
        )
    sketch_objects = np.array([row_of[iid] for iid, _, _ in sketches], np.int64)
    per_object: list[list[int]] = [[] for _ in ids]
    negatives: list[set[int]] = [set() for _ in ids]
    for m, (iid, _, pairs) in enumerate(sketches):
        o = row_of[iid]
        per_object[o].append(m)
        for j in pairs.reshape(-1).tolist():
            if j in row_of_int and row_of_int[j] != o:
                negatives[o].add(row_of_int[j])
    sketch_rows, sketch_counts = _padded(per_object, fill_first=True)
    negative_rows, negative_counts = _padded([sorted(s) for s in negatives], fill_first=True)
    image_bytes = np.array([images[i][0] for i in ids], dtype=object)
    sketch_bytes = np.array([b for _, b, _ in sketches], dtype=object)
    return PairedSplit(
        records_dir=str(records_dir),
        instance_ids=np.array(ids),
        image_bytes=image_bytes,
        image_keys=cache.image_keys(tf.constant(image_bytes)).numpy(),
        class_ids=np.array([images[i][1] for i in ids], np.int64),
        sketch_bytes=sketch_bytes,
        sketch_keys=cache.image_keys(tf.constant(sketch_bytes)).numpy(),
        sketch_objects=sketch_objects,
        sketch_rows=sketch_rows,
        sketch_counts=sketch_counts,
        negatives=negative_rows,
        negative_counts=negative_counts,
    )


def _prepare_command(config: ml_collections.ConfigDict, split: str) -> str:
    root = config.data.root
    if "synthetic" in config.data:
        return synthetic_prepare_command(config, config.data.synthetic.task)
    category = os.path.basename(os.path.normpath(root)).replace("qmul_", "")
    qmul_split = "test" if split == "test" else "train"
    return (
        f"python prepare_data.py --source=qmul --root=../shared/data/qmul/{category} "
        f"--category={category} --split={qmul_split} --out={root}"
    )


class FgSbirTask(Task):
    """Sketch / image towers on HED's VGG16 for instance-level retrieval (module docstring)."""

    name = "fg_sbir"
    config_module = family_config
    evaluator_types = (FgSbirEvaluator,)
    serving_type = FgSbirServing
    retrieval_type = FgSbirRetrieval

    #: The main job's "CPU s" for this family, its rendering included (2-core AMD EPYC,
    #: AVX-512, 220 GFLOP/s; issue 26, rendering in the family processes).
    main_job_cpu_s = 68.0
    headlines = headlines_with_baselines(
        (("acc@1, held-out objects", "acc_at_1"), ("acc@10, held-out objects", "acc_at_10")),
        (("HOG", "hog/{key}"), ("raw pixels", "raw_pixels/{key}"), ("random", "random/{key}")),
    )

    # ---- model ---------------------------------------------------------------------------
    def build_models(self):
        m, d = self.config.model, self.config.data
        kwargs = backbones.backbone_kwargs(m)
        # The split-point trunk (vgg16, vgg16_hed) takes its weights outside backbone_kwargs.
        weights_path = kwargs.pop("weights_path", None)
        return fg_models.build_fg_sbir_models(
            int(d.image_size),
            shared=bool(m.shared),
            trunk_blocks=int(m.trunk_blocks),
            frozen_blocks=int(m.frozen_blocks),
            projection_dim=int(m.projection_dim),
            hidden=tuple(int(w) for w in m.hidden),
            grid=int(m.grid),
            feature_scale=float(m.feature_scale),
            weights_path=weights_path,
            backbone=m.backbone,
            backbone_kwargs=kwargs,
        )

    # ---- geometry of the split-point maps ------------------------------------------------
    def crop_cells(self) -> int:
        """Side of the training crop in map cells."""
        return int(self.config.data.crop_size) // fg_models.split_stride(
            self.config.model.frozen_blocks
        )

    def map_cells(self) -> int:
        """Side of a whole image's split-point map in cells."""
        d = self.config.data
        return fg_models.map_cells(int(d.image_size), int(self.config.model.frozen_blocks))

    # ---- data ----------------------------------------------------------------------------
    def records_dir(self, which: str) -> str:
        """The training (`which="train"`) or evaluation (`"test"`) record set, checked."""
        return self.train_test_records(which, lambda split: _prepare_command(self.config, split))

    def pairs(self, which: str) -> PairedSplit:
        """`read_pairs` of the train / test records, read once per task."""
        memo = self.__dict__.setdefault("_pairs", {})
        if which not in memo:
            d = self.config.data
            memo[which] = read_pairs(
                self.records_dir(which), d.sketch_domain, d.image_domain, tuple(d.classes)
            )
        return memo[which]

    def is_drawing(self, role: str) -> bool:
        """Whether the `role` ("sketch" / "image") images are line drawings (preprocessing
        with white padding; HOG of the ink)."""
        return role == "sketch" or bool(self.config.data.gallery_drawings)

    def uses_feature_cache(self) -> bool:
        return bool(self.config.data.feature_cache)

    def feature_caches(self, models, which: str, log=print) -> dict[str, cache.FeatureCache]:
        """{"<role>" / "<role>_flip": FeatureCache} of the frozen part's maps of the sketches
        and images of the `which` split (and of their mirror images unless data.flip="none"
        and eval.multi_crop is off), computed on first use, stored as float16."""
        memo = self.__dict__.setdefault("_caches", {})
        if which in memo:
            return memo[which]
        d = self.config.data
        split = self.pairs(which)
        flips = [False]
        if d.flip != "none" or self.config.eval.multi_crop:
            flips.append(True)
        out = {}
        for role, keys, blobs in (
            ("sketch", split.sketch_keys, split.sketch_bytes),
            ("image", split.image_keys, split.image_bytes),
        ):
            # A list of bytes, not a numpy 'S' array (which drops trailing NUL bytes).
            def images(keys=keys, blobs=blobs):
                return tf.data.Dataset.from_tensor_slices((keys, tf.constant(blobs.tolist())))

            # The pairs hold every `role` record of the split's data.classes (`read_pairs`).
            out.update(
                self._maps_caches(
                    models, split.records_dir, role, tuple(d.classes) or None, images, flips, log
                )
            )
        memo[which] = out
        return out

    def gallery_caches(
        self, models, records_dir: str, classes=None, log=print
    ) -> dict[str, cache.FeatureCache]:
        """{"image" (and "image_flip" with eval.multi_crop): FeatureCache} of the frozen
        part's maps of every `data.image_domain` image of `classes` (names; None: all) in
        the labelled-image folder `records_dir` (a retrieval gallery), computed on first use
        in that folder's cache (the test records' cache for the test gallery), stored as
        float16. The test gallery of the run's `data.classes` is the evaluation's image set:
        the caches evaluation loaded are reused as they are (`_maps_caches`)."""
        domain = self.config.data.image_domain
        flips = [False, True] if self.config.eval.multi_crop else [False]
        wanted = None if classes is None else list(classes)

        def images():
            return pipeline.labelled_image_bytes(records_dir, domains=[domain], classes=wanted)

        return self._maps_caches(models, records_dir, "image", classes, images, flips, log)

    def _maps_caches(self, models, records_dir, role, classes, images, flips, log):
        """{"<role>" / "<role>_flip": FeatureCache} of the frozen part's maps of the `role`
        ("sketch" / "image") domain's records of `classes` (None: all) in the records folder
        `records_dir`, unflipped and mirrored as `flips` says. `images()` gives those records'
        (int64 key, encoded image) pairs; it is called only when a view is not memoised: the
        memo is keyed by the images (folder, role, classes), the flip and the trunk, so that
        evaluation's test images and the export's gallery of the same images load once."""
        d, m = self.config.data, self.config.model
        trunk = fg_models.trunk_of(fg_models.sketch_tower(models))
        if trunk.trainable_weights:
            raise ValueError("fg_sbir: data.feature_cache: the frozen part has trainable weights")
        size = int(d.image_size)
        drawing = self.is_drawing(role)
        memo = self.__dict__.setdefault("_views", {})
        which = (
            os.path.abspath(records_dir),
            role,
            None if classes is None else tuple(sorted(classes)),
        )
        dataset = None
        out = {}
        for flip in flips:
            view = f"{role}_flip" if flip else role
            key = (*which, flip, id(trunk))
            if key in memo:
                out[view] = memo[key][1]
                continue
            dataset = images() if dataset is None else dataset

            def prep(e, flip=flip):
                x = pipeline.preprocess(e, drawing, size, False)
                return tf.reverse(x, axis=[1]) if flip else x

            spec = {
                "task": "fg_sbir",
                "backbone": m.backbone,
                "backbone_weights": m.backbone_weights,
                "frozen_blocks": int(m.frozen_blocks),
                "image_size": size,
                "drawing": drawing,
                "flip": flip,
            }
            out[view] = cache.cached_features(
                cache.cache_root(records_dir, d.cache_dir), f"fg_sbir_{view}_maps",
                spec, trunk, dataset, prep, batch_size=int(self.config.eval.batch_size),
                dtype="float16", log=log,
            )  # fmt: skip
            memo[key] = (trunk, out[view])  # the trunk kept alive: its id is never reused
        return out

    def precompute(self, models, log=print) -> dict[str, str]:
        return cached_towers.precompute(self, models, log)

    def build_train_dataset(self, global_batch_size, seed, models=None):
        d = self.config.data
        split = self.pairs("train")
        n = len(split.instance_ids)
        b = int(global_batch_size)
        if b > n:
            raise ValueError(
                f"fg_sbir: train.batch_size={b} exceeds the {n} training objects of "
                f"{split.records_dir} (a batch holds distinct objects)"
            )
        full, crop = self.map_cells(), self.crop_cells()
        flip_pairs = d.flip == "pair"
        sketch_rows = tf.constant(split.sketch_rows)
        sketch_counts = tf.constant(split.sketch_counts)
        negatives = tf.constant(split.negatives)
        negative_counts = tf.constant(split.negative_counts)
        sketch_keys = tf.constant(split.sketch_keys)
        image_keys = tf.constant(split.image_keys)
        if self.uses_feature_cache():
            if models is None:
                raise ValueError("fg_sbir: data.feature_cache needs the models to build the cache")
            caches = self.feature_caches(models, "train")
            lookups = {name: c.lookup(f"fg_sbir training {name}") for name, c in caches.items()}

            def view(role, key, flip):
                if not flip_pairs:
                    return lookups[role](key)
                return tf.cond(
                    flip, lambda: lookups[f"{role}_flip"](key), lambda: lookups[role](key)
                )

            def pixels(role, row, flip):
                return view(
                    role, tf.gather(sketch_keys if role == "sketch" else image_keys, row), flip
                )

            suffix = "_features"
        else:
            sketch_bytes = tf.constant(split.sketch_bytes.tolist())
            image_bytes = tf.constant(split.image_bytes.tolist())
            size = int(d.image_size)

            def pixels(role, row, flip):
                blobs = sketch_bytes if role == "sketch" else image_bytes
                x = pipeline.preprocess(tf.gather(blobs, row), self.is_drawing(role), size, False)
                return tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)

            suffix = ""

        def row(obj, s):
            obj = tf.cast(obj, tf.int32)
            k = tf.random.experimental.stateless_split(s, 6)
            uniform = [tf.random.stateless_uniform([], k[i]) for i in range(3)]
            pick = tf.cast(uniform[0] * tf.cast(sketch_counts[obj], tf.float32), tf.int32)
            sketch = sketch_rows[obj, pick]
            count = negative_counts[obj]
            annotated = negatives[obj, tf.cast(uniform[1] * tf.cast(count, tf.float32), tf.int32)]
            other = (obj + 1 + tf.cast(uniform[1] * float(n - 1), tf.int32)) % n
            negative = tf.where(count > 0, annotated, other) if n > 1 else obj
            flip = tf.logical_and(tf.constant(flip_pairs), uniform[2] < 0.5)
            offsets = [
                tf.random.stateless_uniform([2], k[3 + i], 0, full - crop + 1, dtype=tf.int32)
                for i in range(3)
            ]
            return {
                f"sketch{suffix}": pixels("sketch", sketch, flip),
                f"image{suffix}": pixels("image", obj, flip),
                f"negative{suffix}": pixels("image", negative, flip),
                "sketch_offset": offsets[0],
                "image_offset": offsets[1],
                "negative_offset": offsets[2],
                "object": obj,
                "negative_object": negative,
            }

        # A permutation of the objects cut into full batches, reshuffled every epoch: a batch
        # never holds an object twice (its other images are all true negatives).
        objects = (
            tf.data.Dataset.range(n)
            .shuffle(n, seed=seed, reshuffle_each_iteration=True)
            .batch(b, drop_remainder=True)
            .repeat()
            .unbatch()
        )
        seeds = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.constant(seed, tf.int64), i]))
        return (
            tf.data.Dataset.zip((objects, seeds))
            .map(row, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(b, drop_remainder=True)
            .prefetch(2)
            .with_options(pipeline.dataset_options())
        )

    # ---- training ------------------------------------------------------------------------
    def embed_batch(self, models, batch, role: str, training: bool) -> tf.Tensor:
        """Embeddings [b, E] of one column of a training batch ("sketch", "image",
        "negative"): the head on the cropped split-point maps (from the cache, or the frozen
        part run on the images)."""
        tower = (fg_models.sketch_tower if role == "sketch" else fg_models.image_tower)(models)
        maps = batch.get(f"{role}_features")  # a batch (not config): cached maps, if any
        if maps is None:
            maps = fg_models.trunk_of(tower)(batch[role], training=training)
        cropped = fg_models.crop_maps(maps, batch[f"{role}_offset"], self.crop_cells())
        return fg_models.head_of(tower)(cropped, training=training)

    def compute_losses(self, models, batch, ctx: LossContext):
        cfg = self.config.loss
        margin = float(cfg.margin)
        s = self.embed_batch(models, batch, "sketch", True)
        p = self.embed_batch(models, batch, "image", True)
        out, total = {}, 0.0
        annotated_weight = float(cfg.annotated_weight)
        n = self.embed_batch(models, batch, "negative", True) if annotated_weight > 0 else None
        if cfg.mining != "none":
            keys, labels = p, batch["object"]
            if n is not None:
                keys = tf.concat([p, n], 0)
                labels = tf.concat([batch["object"], batch["negative_object"]], 0)
            mined = ctx.share(
                losses.mined_triplet_loss(
                    ctx.all_gather(s),
                    ctx.all_gather(batch["object"]),
                    ctx.all_gather(keys),
                    ctx.all_gather(labels),
                    mining=cfg.mining,
                    margin=margin,
                )
            )
            out["in_batch"] = mined
            total += mined
        if n is not None:
            annotated = ctx.mean(losses.triplet_loss(s, p, n, margin=margin))
            out["annotated"] = annotated
            total += annotated_weight * annotated
        out["total"] = total
        return out


__all__ = ["FgSbirTask", "PairedSplit", "read_pairs"]
