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

Non-learned baselines (`eval.baselines`, names of `sketch_tf.eval.baselines.BASELINE_NAMES`;
``()`` skips them): HOG of the sketches' ink and of the photos' edge maps, and raw downsampled
grey pixels, computed per batch from the very images the towers embed (only the descriptors are
kept) and ranked on exactly the same queries and gallery with the same metric and tie rule.
Their scalars are `<name>_<key>` for every key of `METRIC_KEYS` (`hog_map_all`,
`raw_pixels_p_100`, ...), rows of the "unseen classes: model vs baselines" table next to the
random ranking. With `eval.metric="cosine"` the descriptors are L2-normalised and ranked by
Euclidean distance, the same order, with an all-zero descriptor (a blank image) at cosine 0 to
everything instead of an error.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from sketch_tf.data import tfrecord
from sketch_tf.eval import baselines as baselines_lib
from sketch_tf.eval import plots, retrieval
from sketch_tf.eval.retrieval import unit_rows
from sketch_tf.families.embedding import embed_labelled_records
from sketch_tf.index import GalleryIndex
from sketch_tf.models import zs_sbir as zs_models

#: Scalars (and table columns) of the evaluation; each also as `random_<key>` and, for every
#: baseline of `eval.baselines`, `<baseline>_<key>`.
METRIC_KEYS = ("map_all", "map_all_sake", "map_200", "map_200_sake", "p_100", "p_200")


def configured_baselines(config) -> tuple[str, ...]:
    """`eval.baselines` (a config.json saved before the key existed gets the default, every
    baseline, from `sketch_tf.train.config.migrate`)."""
    return tuple(config.eval.baselines or ())


def embed_split(task, models, domain: str, classes: list[str], baselines=()):
    """Embeds every test record of `domain` and `classes` with the matching tower
    (`embedding.embed_labelled_records`).

    `baselines`: names of `sketch_tf.eval.baselines.BASELINE_NAMES` whose descriptors are
    computed batch by batch from the same preprocessed images (sketch or photo by `domain`).

    Returns (embeddings float32 [N, E], class ids int64 [N], uint8 thumbnails [N, 48, 48, 3],
    instance ids [N] str, {baseline name: descriptors float32 [N, D]}).
    """
    d = task.config.data
    is_sketch = domain == d.sketch_domain
    if task.uses_feature_cache():
        # The heads on the cached features of the frozen trunk: the same embeddings as
        # `tower(images)` (tests/families/zs_sbir), without running the trunk again.
        role = "sketch" if is_sketch else "photo"
        lookup = task.feature_caches(models, "test")[role].lookup(f"zs_sbir test {domain}")
        head = task.tower_heads(models)[role]

        def embedding(batch):
            return head(lookup(batch["image_key"]), training=False)
    else:
        tower = zs_models.sketch_tower(models) if is_sketch else zs_models.photo_tower(models)

        def embedding(batch):
            return tower(batch["image"], training=False)

    out = embed_labelled_records(
        task.records_dir("test"),
        classes=classes,
        domains=[domain],
        image_size=int(d.image_size),
        sketch_domain=d.sketch_domain,
        batch_size=int(task.config.eval.batch_size),
        embedders={"embedding": embedding},
        descriptors={
            name: functools.partial(baselines_lib.baseline_descriptors, name, is_sketch=is_sketch)
            for name in baselines
        },
        empty_error=f"zs_sbir: no {domain!r} records of classes {classes}",
    )
    return (
        out["embedding"].astype(np.float32),
        out["class_id"],
        out["thumbs"],
        out["instance_id"],
        {name: out[name] for name in baselines},
    )


def baseline_metrics(q_desc, ql, g_desc, gl, metric: str) -> dict:
    """`retrieval.retrieval_metrics` of baseline descriptors with the model's metric.

    Cosine is ranked as the Euclidean distance of L2-normalised rows (the same order), so an
    all-zero descriptor scores as cosine 0 against everything instead of raising.
    """
    if metric == "cosine":
        q_desc, g_desc, metric = unit_rows(q_desc), unit_rows(g_desc), "euclidean"
    return retrieval.retrieval_metrics(q_desc, ql, g_desc, gl, metric=metric)


def grid_top_k(queries: np.ndarray, gallery: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Gallery rows int64 [Q, k] of the grid's results, from `sketch_tf.index.GalleryIndex`
    (exact search, the library's and the `retrieve` signature's ranking; cosine as the inner
    product of unit rows, so that a blank image scores 0 instead of failing)."""
    if metric == "cosine":
        queries, gallery, metric = unit_rows(queries), unit_rows(gallery), "inner_product"
    index = GalleryIndex(gallery.shape[1], metric=metric)
    index.add(gallery)
    return index.search(queries, k)[1]


@dataclasses.dataclass
class ZsSbirEvaluator:
    """The `Evaluator` of the zero-shot SBIR family: unseen-class retrieval next to the
    random ranking and the non-learned baselines (see the module docstring)."""

    name = "zs_sbir/unseen_retrieval"

    task: Any  # the family's Task

    def run(self, models, workdir=None) -> dict[str, Any]:
        """Metrics, tables and the retrieval grid of the module docstring; files only when
        `workdir` is given."""
        task = self.task
        d, e = task.config.data, task.config.eval
        path = task.records_dir("test")
        names = tfrecord.read_manifest(path)["classes"]
        _, unseen = task.class_split(names)
        baseline_names = configured_baselines(task.config)
        q, ql, q_img, _, q_base = embed_split(task, models, d.sketch_domain, unseen, baseline_names)
        g, gl, g_img, _, g_base = embed_split(task, models, d.photo_domain, unseen, baseline_names)
        res = retrieval.retrieval_metrics(q, ql, g, gl, metric=e.metric)
        rnd = retrieval.random_ranking_baseline(
            ql, gl, seed=int(task.config.seed), repeats=int(e.baseline_repeats)
        )
        keys = METRIC_KEYS
        scalars = {k: float(res[k]) for k in keys}
        scalars.update({f"random_{k}": float(rnd[k]) for k in keys})
        baseline_rows = []
        for name in baseline_names:
            b = baseline_metrics(q_base[name], ql, g_base[name], gl, e.metric)
            scalars.update({f"{name}_{k}": float(b[k]) for k in keys})
            baseline_rows.append(
                [baselines_lib.BASELINE_LABELS[name]] + [float(b[k]) for k in keys]
            )
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
            "unseen classes: model vs baselines": {
                "header": ["ranking"] + list(keys),
                "rows": [
                    ["model"] + [scalars[k] for k in keys],
                    ["random"] + [scalars[f"random_{k}"] for k in keys],
                ]
                + baseline_rows,
            },
            "per unseen class": {"header": header, "rows": rows},
        }

        # Retrieval grid: the first queries of each class in turn, their top-k photos.
        per_class = [np.flatnonzero(ql == c) for c in np.unique(ql)]
        picks = []
        for i in range(max(len(x) for x in per_class)):
            picks += [x[i] for x in per_class if i < len(x)]
        picks = picks[: int(e.grid_queries)]
        top = grid_top_k(q[picks], g, e.metric, int(e.grid_top_k))
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
