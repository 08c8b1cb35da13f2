"""Evaluation of the fine-grained SBIR family: the field's instance-level protocol.

Protocol (QMUL Shoes / Chairs, Yu et al., CVPR 2016): queries = every sketch of the test split
(`data.test_split`: the validation split carved from the training files, or the official test
split), gallery = every image of the split (`data.image_domain`), one true match per query
(the image of its object). Ranking by `eval.metric` over the embeddings, ties after the match
(`sketch_tf.eval.retrieval.match_ranks`); figures: acc@K (`eval.ks`: the share of queries whose
match is in the top K), mean and median rank. Embeddings: the whole image, or with
`eval.multi_crop` the mean of 10 views (4 corner and centre crops, and their mirror images), as
the original's test-time averaging (`sketch_tf.models.fg_sbir.embed_images`).

In the same run, on the same queries and gallery, with the same metric and tie rule:
non-learned baselines (`eval.baselines`: HOG of the sketch ink against HOG of the gallery's ink
(edge maps) or Sobel edges (photos), raw 16x16 grey pixels; `sketch_tf.eval.baselines`) and the
exact expectation of a random ranking. Scalars: `acc_at_<K>`, `mean_rank`, `median_rank` for
the model and `<baseline>/<key>` for each baseline and `random`. Pictures: a query grid (sketch,
top-k images, the true match framed green) in `<workdir>/eval/query_grid.png` and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline
from sketch_tf.data.options import one_pass
from sketch_tf.eval import baselines as baselines_lib
from sketch_tf.eval import plots, retrieval
from sketch_tf.eval.retrieval import unit_rows
from sketch_tf.index import GalleryIndex
from sketch_tf.models import fg_sbir as fg_models

THUMB = 64


def embed_role(task, models, split, role: str, baselines=()) -> dict[str, Any]:
    """Embeds every sketch (`role="sketch"`) or gallery image (`"image"`) of a `PairedSplit`.

    Returns {"embeddings": float32 [N, E], "thumbs": uint8 [N, THUMB, THUMB, 3],
    "baselines": {name: float32 [N, D]}} (baselines from the same preprocessed images).
    """
    d, e = task.config.data, task.config.eval
    keys = split.sketch_keys if role == "sketch" else split.image_keys
    blobs = split.sketch_bytes if role == "sketch" else split.image_bytes
    drawing = task.is_drawing(role)
    size = int(d.image_size)
    tower = (fg_models.sketch_tower if role == "sketch" else fg_models.image_tower)(models)
    multi = bool(e.multi_crop)
    crop = task.crop_cells()
    if task.uses_feature_cache():
        caches = task.feature_caches(models, "test")
        plain = caches[role].lookup(f"fg_sbir test {role}s")
        flipped = caches[f"{role}_flip"].lookup(f"fg_sbir test {role}s") if multi else None

        def embed(k, x):
            return fg_models.embed_images(
                tower, maps=plain(k), flipped_maps=flipped(k) if multi else None,
                multi_crop=multi, crop_cells=crop,
            )  # fmt: skip
    else:

        def embed(k, x):
            return fg_models.embed_images(tower, x, multi_crop=multi, crop_cells=crop)

    @tf.function(reduce_retracing=True)  # the last batch is smaller
    def step(k, x):
        thumbs = tf.image.resize(x, [THUMB, THUMB], antialias=True)
        return embed(k, x), tf.cast(tf.round(thumbs * 255.0), tf.uint8)

    ds = one_pass(
        tf.data.Dataset.from_tensor_slices((keys, tf.constant(blobs.tolist())))
        .map(lambda k, b: (k, pipeline.preprocess(b, drawing, size, False)))
        .batch(int(e.batch_size))
        .prefetch(2)
    )
    embeddings, thumbs = [], []
    descs = {name: [] for name in baselines}
    for k, x in ds:
        emb, th = step(k, x)
        embeddings.append(emb.numpy())
        thumbs.append(th.numpy())
        for name, parts in descs.items():
            parts.append(baselines_lib.baseline_descriptors(name, x.numpy(), drawing))
    return {
        "embeddings": np.concatenate(embeddings).astype(np.float32),
        "thumbs": np.concatenate(thumbs),
        "baselines": {name: np.concatenate(parts) for name, parts in descs.items()},
    }


def ranked(queries, gallery, match, metric: str, ks) -> dict[str, Any]:
    """`retrieval.instance_retrieval_metrics`, with cosine ranked as the Euclidean distance of
    unit rows (the same order; a blank image's all-zero descriptor ranks instead of failing)."""
    if metric == "cosine":
        queries, gallery, metric = unit_rows(queries), unit_rows(gallery), "euclidean"
    return retrieval.instance_retrieval_metrics(queries, gallery, match, metric=metric, ks=ks)


def top_k(queries: np.ndarray, gallery: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Gallery rows int64 [Q, k] of the best results (`GalleryIndex`, exact search: the
    ranking of the `retrieve` signature)."""
    if metric == "cosine":
        queries, gallery = unit_rows(queries), unit_rows(gallery)
    index = GalleryIndex(gallery.shape[1], metric="euclidean")
    index.add(gallery)
    return index.search(queries, min(int(k), len(gallery)))[1]


@dataclasses.dataclass
class FgSbirEvaluator:
    """The `Evaluator` of the fine-grained SBIR family: instance-level retrieval of the test
    split next to the non-learned baselines and the random ranking (module docstring)."""

    name = "fg_sbir/instance_retrieval"

    task: Any  # the family's Task

    def run(self, models, workdir=None) -> dict[str, Any]:
        """Figures, table and query grid of the module docstring; files only when `workdir` is
        given."""
        task = self.task
        e = task.config.eval
        split = task.pairs("test")
        names = tuple(e.baselines or ())
        ks = tuple(int(k) for k in e.ks)
        q = embed_role(task, models, split, "sketch", names)
        g = embed_role(task, models, split, "image", names)
        match = split.sketch_objects
        res = ranked(q["embeddings"], g["embeddings"], match, e.metric, ks)
        figures = [f"acc_at_{k}" for k in ks] + ["mean_rank", "median_rank"]
        scalars = {key: float(res[key]) for key in figures}
        rows = [["model"] + [scalars[key] for key in figures]]
        for name in names:
            b = ranked(q["baselines"][name], g["baselines"][name], match, e.metric, ks)
            scalars.update({f"{name}/{key}": float(b[key]) for key in figures})
            rows.append([baselines_lib.BASELINE_LABELS[name]] + [float(b[key]) for key in figures])
        rnd = retrieval.random_instance_metrics(len(split.instance_ids), ks)
        scalars.update({f"random/{key}": float(rnd[key]) for key in figures})
        rows.append(["random (expected)"] + [float(rnd[key]) for key in figures])
        scalars.update(num_queries=float(len(match)), num_gallery=float(len(split.instance_ids)))
        header = ["ranking"] + [f"acc@{k}" for k in ks] + ["mean rank", "median rank"]
        tables = {"held-out objects: model vs baselines": {"header": header, "rows": rows}}

        # Query grid: the first sketches, their best images; the true match framed green.
        picks = np.arange(min(int(e.grid_queries), len(match)))
        best = top_k(q["embeddings"][picks], g["embeddings"], e.metric, int(e.grid_top_k))
        grid = plots.retrieval_grid(
            [q["thumbs"][i] for i in picks], [[g["thumbs"][j] for j in row] for row in best],
            best == match[picks][:, None], thumb_size=THUMB,
        )  # fmt: skip
        out = {
            "scalars": scalars,
            "images": {"query_grid": plots.to_array(grid)[None]},
            "tables": tables,
            "ranks": res["ranks"].tolist(),
        }
        if workdir:
            path = os.path.join(workdir, "eval", "query_grid.png")
            plots.save_png(grid, path)
            out["files"] = {"query_grid": path}
        return out
