"""Task "zs_sbir": zero-shot sketch-based image retrieval with a gradient reversal layer.

Training (seen classes only): a batch holds triplets (sketch of class a, photo of a, photo of
n != a). Loss per replica share of the global-batch mean:

    total = triplet_weight * triplet + domain_weight * domain
    triplet = max(||s - p+|| - ||s - p-|| + margin, 0)      (Euclidean, not squared)
    domain  = mean over {s, p+, p-} of BCE(domain_classifier(GRL(e)), photo ? 1 : 0)

Negatives: "random" / "class_embedding" pick the negative photo's class in the input pipeline
(`pipeline.triplet_batches`); "mined" ignores it and mines in-batch over the *global* batch
(sketches as queries against every photo of the batch, `losses.mined_triplet_loss`).
The GRL lambda is set before every step from `grl_lambda(step // steps_per_epoch, ...)`.

Evaluation (unseen classes only): gallery = every photo of the unseen classes in the test
records, queries = every sketch of the unseen classes; metrics of `eval.retrieval` next to a
random ranking; retrieval grid PNG and projector files in `<workdir>/eval`.
"""

from __future__ import annotations

import io
import os
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from sketch_tf import losses
from sketch_tf.data import pipeline, tfrecord
from sketch_tf.models import zs_sbir as zs_models
from sketch_tf.models.backbones import BACKBONES
from sketch_tf.paths import PROJECT_ROOT
from sketch_tf.train.schedules import GRL_SCHEDULES, grl_lambda
from sketch_tf.train.tasks import LossContext, Task, register_task

NEGATIVE_MODES = ("random", "class_embedding", "mined")
MINING_MODES = ("semi_hard", "hard", "all", "random")
METRICS = ("euclidean", "cosine")


def _prepare_command(config: ml_collections.ConfigDict) -> str:
    root = config.data.root
    if "synthetic" in config.data:
        s = config.data.synthetic
        return (
            "python prepare_data.py --source=synthetic --task=zs_sbir "
            f"--image_size={s.get('image_size', 96)} --n_per_category={s.get('n_per_category', 20)}"
            f" --test_fraction={s.get('test_fraction', 0.2)} --out={root}"
        )
    if "pacs" in root:
        return (
            f"python prepare_data.py --source=folders --root=../shared/data/pacs --out={root}/all"
        )
    return f"python prepare_data.py --source=folders --root=<dataset folder> --out={root}/<split>"


def split_dir(config: ml_collections.ConfigDict, which: str) -> str:
    """`<data.root>/<data.{which}_split>`, checked to hold a manifest (clear error otherwise)."""
    split = config.data.train_split if which == "train" else config.data.test_split
    path = os.path.join(config.data.root, split)
    if not os.path.isfile(os.path.join(path, tfrecord.MANIFEST)):
        raise FileNotFoundError(
            f"zs_sbir: no {which} records in {path} (missing {tfrecord.MANIFEST}); create "
            f"them with: {_prepare_command(config)}"
        )
    return path


def _resolve(path: str) -> str:
    """`path` as given when it exists (relative to the working directory), else relative to
    the project root, so that `data/splits/...` works from any directory."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return str(PROJECT_ROOT / path)


def _read_class_file(path: str) -> list[str]:
    path = _resolve(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"zs_sbir: class list {path} does not exist (one class name per line expected)"
        )
    with open(path) as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not names:
        raise ValueError(f"zs_sbir: class list {path} is empty")
    return names


def class_split(config: ml_collections.ConfigDict, all_classes: list[str]):
    """(seen, unseen) class name lists for the dataset's class list `all_classes`."""
    unseen = list(config.data.unseen_classes)
    if config.data.unseen_classes_file:
        unseen = _read_class_file(config.data.unseen_classes_file)
    seen = list(config.data.seen_classes) or [c for c in all_classes if c not in unseen]
    missing = sorted(set(seen + unseen) - set(all_classes))
    if missing:
        raise ValueError(
            f"zs_sbir: classes {missing} of the seen/unseen split are not in the dataset "
            f"(it has {all_classes})"
        )
    if not unseen:
        raise ValueError("zs_sbir: no unseen classes: set data.unseen_classes(_file)")
    return seen, unseen


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _warmup_sketch(size: int) -> np.ndarray:
    """A white uint8 [size, size, 3] canvas with a black square outline and a diagonal."""
    img = np.full((size, size, 3), 255, np.uint8)
    a, b = size // 4, 3 * size // 4
    img[a, a:b] = img[b, a:b] = img[a:b, a] = img[a:b, b] = 0
    idx = np.arange(a, b)
    img[idx, idx] = 0
    return img


@register_task("zs_sbir")
class ZsSbirTask(Task):
    """Sketch/photo towers + GRL domain classifier (see module docstring)."""

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config):
        p = []
        d, m, loss, g, e = config.data, config.model, config.loss, config.grl, config.eval
        if not d.root:
            p.append("data.root must name the folder holding the record splits")
        if not d.unseen_classes and not d.unseen_classes_file:
            p.append("data.unseen_classes or data.unseen_classes_file must be set")
        if d.unseen_classes_file and not os.path.isfile(_resolve(d.unseen_classes_file)):
            p.append(
                f"data.unseen_classes_file={d.unseen_classes_file!r} does not exist "
                "(one class name per line; see data/README.md for the standard splits)"
            )
        overlap = sorted(set(d.seen_classes) & set(d.unseen_classes))
        if overlap:
            p.append(f"data.seen_classes and data.unseen_classes overlap: {overlap}")
        if not isinstance(d.image_size, int) or d.image_size < 32:
            p.append(f"data.image_size must be an integer >= 32, got {d.image_size!r}")
        if m.backbone not in BACKBONES:
            p.append(f"model.backbone must be one of {sorted(BACKBONES)}, got {m.backbone!r}")
        if m.backbone_weights and not os.path.isfile(m.backbone_weights):
            p.append(f"model.backbone_weights file {m.backbone_weights} does not exist")
        if m.projection_dim < 0:
            p.append(f"model.projection_dim must be >= 0, got {m.projection_dim}")
        if m.domain_hidden <= 0 or m.domain_layers < 0:
            p.append("model.domain_hidden must be > 0 and model.domain_layers >= 0")
        if loss.triplet_weight < 0 or loss.domain_weight < 0:
            p.append("loss.triplet_weight and loss.domain_weight must be >= 0")
        if loss.triplet_weight == 0 and loss.domain_weight == 0:
            p.append("loss.triplet_weight and loss.domain_weight are both 0: nothing to learn")
        if loss.margin < 0:
            p.append(f"loss.margin must be >= 0, got {loss.margin}")
        if loss.negatives not in NEGATIVE_MODES:
            p.append(f"loss.negatives must be one of {NEGATIVE_MODES}, got {loss.negatives!r}")
        if loss.mining not in MINING_MODES:
            p.append(f"loss.mining must be one of {MINING_MODES}, got {loss.mining!r}")
        if loss.negatives == "class_embedding" and not d.class_embeddings:
            p.append("loss.negatives='class_embedding' needs data.class_embeddings (.npy path)")
        if d.class_embeddings and not os.path.isfile(d.class_embeddings):
            p.append(f"data.class_embeddings file {d.class_embeddings} does not exist")
        if g.schedule not in GRL_SCHEDULES:
            p.append(f"grl.schedule must be one of {GRL_SCHEDULES}, got {g.schedule!r}")
        elif g.schedule == "intended_ramp" and g.threshold_epoch <= g.start_epoch:
            p.append("grl.threshold_epoch must be > grl.start_epoch for intended_ramp")
        if e.metric not in METRICS:
            p.append(f"eval.metric must be one of {METRICS}, got {e.metric!r}")
        if e.batch_size <= 0:
            p.append(f"eval.batch_size must be > 0, got {e.batch_size}")
        return p

    # ---- model ---------------------------------------------------------------------------
    def build_models(self):
        m = self.config.model
        kwargs = dict(m.backbone_kwargs.to_dict()) if m.get("backbone_kwargs") else {}
        if m.backbone_weights:
            kwargs["weights_path"] = m.backbone_weights
        return zs_models.build_zs_sbir_models(
            m.backbone,
            int(self.config.data.image_size),
            shared=bool(m.shared),
            projection_dim=int(m.projection_dim),
            normalize=bool(m.normalize),
            backbone_kwargs=kwargs,
            domain_hidden=int(m.domain_hidden),
            domain_layers=int(m.domain_layers),
        )

    def trainable_variables(self, models):
        # Without the domain term the classifier gets no gradient: leave it out of the update.
        if float(self.config.loss.domain_weight) == 0.0:
            models = {k: v for k, v in models.items() if k != "domain_classifier"}
        return super().trainable_variables(models)

    # ---- data ----------------------------------------------------------------------------
    def build_train_dataset(self, global_batch_size, seed):
        d = self.config.data
        path = split_dir(self.config, "train")
        manifest = tfrecord.read_manifest(path)
        seen, _ = class_split(self.config, manifest["classes"])
        negatives = self.config.loss.negatives
        return pipeline.triplet_batches(
            path,
            global_batch_size,
            image_size=int(d.image_size),
            seed=seed,
            negatives="random" if negatives == "mined" else negatives,
            class_embeddings=d.class_embeddings or None,
            temperature=float(d.negative_temperature),
            classes=seen,
            sketch_domain=d.sketch_domain,
            photo_domain=d.photo_domain,
            training=True,
            shuffle_buffer=int(d.shuffle_buffer),
        )

    # ---- training ------------------------------------------------------------------------
    def compute_losses(self, models, batch, ctx: LossContext):
        cfg = self.config.loss
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
            b = tf.shape(s)[0]
            logits = models["domain_classifier"](tf.concat([s, p, n], 0), training=True)
            labels = tf.concat([tf.zeros([b]), tf.ones([2 * b])], 0)  # 1 = photo
            bce = tf.reshape(losses.domain_loss(logits, labels), [3, b])
            domain = ctx.mean(tf.reduce_mean(bce, axis=0))
            out["domain"] = domain
            total += float(cfg.domain_weight) * domain
        out["total"] = total
        return out

    def grl_lambda_at(self, step: int) -> float:
        g = self.config.grl
        epoch = int(step) // int(self.config.train.steps_per_epoch)
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
            "epoch": float(int(step) // int(self.config.train.steps_per_epoch)),
        }

    # ---- evaluation ----------------------------------------------------------------------
    def embed_split(self, models, domain: str, classes: list[str]):
        """Embeds every test record of `domain` and `classes`.

        Returns (embeddings float32 [N, E], class ids int64 [N], uint8 thumbnails [N, 48, 48, 3],
        instance ids [N] str).
        """
        d = self.config.data
        path = split_dir(self.config, "test")
        tower = (
            zs_models.sketch_tower(models)
            if domain == d.sketch_domain
            else zs_models.photo_tower(models)
        )
        ds = pipeline.labelled_dataset(
            path,
            int(self.config.eval.batch_size),
            image_size=int(d.image_size),
            training=False,
            classes=classes,
            domains=[domain],
            sketch_domain=d.sketch_domain,
        )

        @tf.function(reduce_retracing=True)  # the last batch is smaller
        def embed(images):
            thumbs = tf.image.resize(images, [48, 48], antialias=True)
            return tower(images, training=False), tf.cast(tf.round(thumbs * 255.0), tf.uint8)

        embs, labels, thumbs, ids = [], [], [], []
        for batch in ds:
            e, t = embed(batch["image"])
            embs.append(e.numpy())
            thumbs.append(t.numpy())
            labels.append(batch["class_id"].numpy())
            ids.extend(x.decode() for x in batch["instance_id"].numpy())
        if not embs:
            raise ValueError(f"zs_sbir: no {domain!r} records of classes {classes} in {path}")
        return (
            np.concatenate(embs).astype(np.float32),
            np.concatenate(labels),
            np.concatenate(thumbs),
            np.asarray(ids),
        )

    def evaluate(self, models, workdir=None):
        from sketch_tf.eval import plots, retrieval

        d, e = self.config.data, self.config.eval
        path = split_dir(self.config, "test")
        names = tfrecord.read_manifest(path)["classes"]
        _, unseen = class_split(self.config, names)
        q, ql, q_img, _ = self.embed_split(models, d.sketch_domain, unseen)
        g, gl, g_img, _ = self.embed_split(models, d.photo_domain, unseen)
        res = retrieval.retrieval_metrics(q, ql, g, gl, metric=e.metric)
        rnd = retrieval.random_ranking_baseline(
            ql, gl, seed=int(self.config.seed), repeats=int(e.baseline_repeats)
        )
        keys = ("map_all", "map_200", "p_100", "p_200")
        scalars = {k: float(res[k]) for k in keys}
        scalars.update({f"random_{k}": float(rnd[k]) for k in keys})
        scalars.update(num_queries=float(len(q)), num_gallery=float(len(g)))
        header = ["class", "queries", "relevant"] + list(keys)
        rows = []
        for label in sorted(res["per_class"], key=int):
            pc = res["per_class"][label]
            rows.append(
                [names[int(label)], int(pc["num_queries"]), int(pc["num_relevant"])]
                + [float(pc[k]) for k in keys]
            )
        tables = {
            "unseen classes: model vs random ranking": {
                "header": ["ranking"] + list(keys),
                "rows": [
                    ["model"] + [scalars[k] for k in keys],
                    ["random"] + [scalars[f"random_{k}"] for k in keys],
                ],
            },
            "per unseen class": {"header": header, "rows": rows},
        }

        # Retrieval grid: the first queries of each class in turn, their top-k photos.
        per_class = [np.flatnonzero(ql == c) for c in np.unique(ql)]
        picks = []
        for i in range(max(len(x) for x in per_class)):
            picks += [x[i] for x in per_class if i < len(x)]
        picks = picks[: int(e.grid_queries)]
        sim = retrieval.similarity(q[picks], g, e.metric)
        top = np.argsort(-sim, axis=1, kind="stable")[:, : int(e.grid_top_k)]
        grid = plots.retrieval_grid(
            [q_img[i] for i in picks], [[g_img[j] for j in row] for row in top],
            gl[top] == ql[picks][:, None], thumb_size=48,
        )  # fmt: skip
        grid_arr = plots.to_array(grid)
        out = {"scalars": scalars, "images": {"retrieval_grid": grid_arr[None]}, "tables": tables}
        if workdir:
            eval_dir = os.path.join(workdir, "eval")
            plots.save_png(grid, os.path.join(eval_dir, "retrieval_grid.png"))
            n_proj = min(len(g), int(e.projector_max))
            if n_proj:
                plots.write_projector(
                    os.path.join(eval_dir, "projector"),
                    g[:n_proj],
                    [names[int(c)] for c in gl[:n_proj]],
                    thumbnails=list(g_img[:n_proj]),
                )
            out["files"] = {
                "retrieval_grid": os.path.join(eval_dir, "retrieval_grid.png"),
                "projector": os.path.join(eval_dir, "projector"),
            }
        return out

    # ---- export --------------------------------------------------------------------------
    def serving_signatures(self, models):
        size = int(self.config.data.image_size)
        sk, ph = zs_models.sketch_tower(models), zs_models.photo_tower(models)

        def decode(images, is_sketch):
            return tf.map_fn(
                lambda x: pipeline.preprocess(x, is_sketch, size, False),
                images,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve_sketch_bytes(images):
            return {"embedding": sk(decode(images, True), training=False)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def embed_photo(images):
            return {"embedding": ph(decode(images, False), training=False)}

        @tf.function(
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
        )
        def embed_sketch(images):
            return {"embedding": sk(images, training=False)}

        return {
            "serving_default": serve_sketch_bytes.get_concrete_function(),
            "embed_photo": embed_photo.get_concrete_function(),
            "embed_sketch": embed_sketch.get_concrete_function(),
        }

    def warmup_inputs(self):
        size = int(self.config.data.image_size)
        img = _warmup_sketch(size)
        png = _png(img)
        return {
            "serving_default": {"images": np.array([png, png], dtype=object)},
            "embed_photo": {"images": np.array([_png(255 - img)], dtype=object)},
            "embed_sketch": {"images": (img[None].astype(np.float32) / 255.0)},
        }


def ablation_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Copy of `config` with the domain loss off (`loss.domain_weight = 0`)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.loss.domain_weight = 0.0
    return out


def run_domain_ablation(
    config: ml_collections.ConfigDict, workdir: str, main_result: dict[str, Any], log=print
) -> dict[str, Any]:
    """Trains (or resumes) the same run without the domain loss in `<workdir>/ablate_domain`,
    evaluates it and adds a model / no-domain-loss / random comparison table (and
    `ablate_domain_*` scalars) to `main_result`. Returns the ablation's own result."""
    from sketch_tf.train import loop

    abl_dir = os.path.join(workdir, "ablate_domain")
    abl_config = ablation_config(config)
    task = ZsSbirTask(abl_config)
    loop.train(task, abl_config, abl_dir, log=log)
    state = loop.build_state(task, abl_config)
    loop.restore_latest(state, os.path.join(abl_dir, "ckpt"), for_training=False)
    result = task.evaluate(state.models, abl_dir)
    loop.write_eval_results(abl_dir, int(state.step.numpy()), result)
    keys = ("map_all", "map_200", "p_100", "p_200")
    s, a = main_result["scalars"], result["scalars"]
    for k in keys:
        s[f"ablate_domain_{k}"] = float(a[k])
    main_result.setdefault("tables", {})["unseen classes: domain loss ablation"] = {
        "header": ["model"] + list(keys),
        "rows": [
            [f"triplet + {config.loss.domain_weight} x domain (GRL)"] + [s[k] for k in keys],
            ["triplet only (domain_weight=0)"] + [float(a[k]) for k in keys],
            ["random ranking"] + [s[f"random_{k}"] for k in keys],
        ],
    }
    return result
