"""Evaluation of the zero-shot SBIR family on unseen classes.

Protocol: queries = every test sketch of the unseen classes, gallery = every test photo of
the unseen classes (no query is in the gallery: different domains), ranked by `eval.metric`
(Euclidean or cosine) with ties broken by gallery order; metrics of
`sketch_tf.eval.retrieval` (`METRIC_KEYS`: mAP@all and mAP@200 both as scikit-learn AP and as
SAKE's VOC-interpolated AP, P@100, P@200) with per-class tables, next to a random ranking of
the same queries and gallery. Compare `map_all` with papers that use scikit-learn's AP
(SEM-PCYC, Doodle-to-Search, the original GRL code) and `map_all_sake` with SAKE and the papers
that reuse its evaluation (see `sketch_tf.eval.retrieval`). Pictures: a retrieval grid (and the
TensorBoard projector files) under `<workdir>/eval`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline, tfrecord
from sketch_tf.eval import plots, retrieval
from sketch_tf.models import zs_sbir as zs_models

#: Scalars (and table columns) of the evaluation; each also as `random_<key>`.
METRIC_KEYS = ("map_all", "map_all_sake", "map_200", "map_200_sake", "p_100", "p_200")


def embed_split(task, models, domain: str, classes: list[str]):
    """Embeds every test record of `domain` and `classes` with the matching tower.

    Returns (embeddings float32 [N, E], class ids int64 [N], uint8 thumbnails [N, 48, 48, 3],
    instance ids [N] str).
    """
    d = task.config.data
    path = task.records_dir("test")
    tower = (
        zs_models.sketch_tower(models)
        if domain == d.sketch_domain
        else zs_models.photo_tower(models)
    )
    ds = pipeline.labelled_dataset(
        path,
        int(task.config.eval.batch_size),
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


def evaluate_task(task, models, workdir=None) -> dict[str, Any]:
    """`ZsSbirTask.evaluate` (see the module docstring); files only when `workdir` is given."""
    d, e = task.config.data, task.config.eval
    path = task.records_dir("test")
    names = tfrecord.read_manifest(path)["classes"]
    _, unseen = task.class_split(names)
    q, ql, q_img, _ = embed_split(task, models, d.sketch_domain, unseen)
    g, gl, g_img, _ = embed_split(task, models, d.photo_domain, unseen)
    res = retrieval.retrieval_metrics(q, ql, g, gl, metric=e.metric)
    rnd = retrieval.random_ranking_baseline(
        ql, gl, seed=int(task.config.seed), repeats=int(e.baseline_repeats)
    )
    keys = METRIC_KEYS
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
