"""Evaluation of the style-aware SBIR family on held-out images (the test records).

Gallery = every test image of the gallery styles (`task.styles()`); sketches = every test
sketch. Similarities are cosines of the L2-normalised embeddings (higher = more similar);
rankings, ties and AP are those of `sketch_tf.eval.retrieval` (scikit-learn AP, `map_all`).

1. **Sketch-only** (relevant = same content): every sketch against the images of one style,
   per style; `sketch_map` is the mean over the styles (`sketch_map/<style>` each), and
   `sketch_map_all_styles` the mAP against the whole gallery.
2. **Sketch + style** (relevant = same content AND same style): one query per (sketch,
   style s), the style exemplar being one test image of style s and of *another* content
   (drawn with `eval.exemplar_seed`; so the exemplar says only how, never what), removed from
   its own ranking. Score of gallery image g:

       alpha * cos(structure(sketch), structure(g)) + (1 - alpha) * cos(style(x), style(g))

   with `alpha` = `eval.alpha` (`evaluate_task(..., alpha=)` overrides it at query time).
   `sketch_style_map` is the mean AP over all queries; the table gives it per content x style
   cell, per row (content) and column (style).
   `style_map`: the style branch alone, every gallery image as a query against the others
   (relevant = same style, any content), next to `colour_texture/style_map` and random.
3. The same tables for the baselines of the same run, on the same queries and gallery:
   `random` (a random ranking), `structure_only` (alpha = 1), `style_only` (alpha = 0) and
   `non_learned`: HOG of sketch ink / image edge maps for structure and
   `baselines.colour_texture` for style, combined with the same alpha. The sketch-only table
   has `random` and `hog`. Scalars `<baseline>/sketch_style_map`, `<baseline>/sketch_map`,
   and an alpha sweep (`eval.alpha_sweep`) of the model and of the non-learned ranking,
   `alpha_<a>/sketch_style_map` and `non_learned/alpha_<a>/sketch_style_map`.
4. Pictures under `<workdir>/eval`: `sketch_style_map.png` (heat-map of the content x style
   table), `query_grid.png` (sketch, exemplar, top-k with green = same content and style),
   and `tables.md` (every table as Markdown).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.core.files import write_atomic
from sketch_tf.data import pipeline, tfrecord
from sketch_tf.eval import baselines as baselines_lib
from sketch_tf.eval import plots, retrieval
from sketch_tf.eval.report import format_result
from sketch_tf.families.style_sbir import serving as style_serving
from sketch_tf.index import GalleryIndex
from sketch_tf.models import style as style_models

#: Rankings of the sketch + style tables next to the model.
BASELINES = ("random", "structure_only", "style_only", "non_learned")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def embed_test_records(task, models, domains, roles, with_baselines: bool) -> dict:
    """Embeds every test record of `domains` with the towers of `roles` (`task.towers` keys).

    Returns {role: float32 [N, E]} plus "content_id" int64 [N], "style_id" int64 [N] (index
    in `task.styles()`, -1 for sketches), "thumbs" uint8 [N, 48, 48, 3] and, when
    `with_baselines`, "hog" and (for gallery images) "colour_texture" descriptors.
    """
    d = task.config.data
    path = task.records_dir("test")
    styles = task.styles()
    is_sketch = list(domains) == [d.sketch_domain]
    classes = tuple(d.classes) or None
    content_of = None  # class id of the records -> content id (sketches of another folder)
    if is_sketch:
        path, class_of = task.sketch_records("test")
        names = tfrecord.read_manifest(path)["classes"]
        classes = [names[i] for i in sorted(class_of.values())]
        content_of = {sc: c for c, sc in class_of.items()}
    ds = pipeline.labelled_dataset(
        path, int(task.config.eval.batch_size), image_size=int(d.image_size), training=False,
        classes=classes, domains=list(domains), sketch_domain=d.sketch_domain,
    )  # fmt: skip
    towers = task.towers(models)
    if task.uses_feature_cache():
        caches = task.feature_caches(models, "test")
        lookups = {r: caches[r].lookup(f"style_sbir test {r}") for r in roles}
        heads = task.heads(models)
        fns = {r: (lambda b, r=r: heads[r](lookups[r](b["image_key"]), training=False))
               for r in roles}  # fmt: skip
    else:
        fns = {r: (lambda b, r=r: towers[r](b["image"], training=False)) for r in roles}

    @tf.function(reduce_retracing=True)  # the last batch is smaller
    def embed(batch):
        thumbs = tf.image.resize(batch["image"], [48, 48], antialias=True)
        return {r: f(batch) for r, f in fns.items()}, tf.cast(tf.round(thumbs * 255.0), tf.uint8)

    parts: dict[str, list] = {k: [] for k in (*roles, "content_id", "style_id", "thumbs")}
    if with_baselines:
        parts["hog"] = []
        if not is_sketch:
            parts["colour_texture"] = []
    for batch in ds:
        embs, thumbs = embed({"image": batch["image"], "image_key": batch["image_key"]})
        for r in roles:
            parts[r].append(embs[r].numpy())
        parts["thumbs"].append(thumbs.numpy())
        ids = batch["class_id"].numpy()
        if content_of is not None:
            ids = np.array([content_of[int(i)] for i in ids], np.int64)
        parts["content_id"].append(ids)
        dom = [x.decode() for x in batch["domain"].numpy()]
        parts["style_id"].append(np.array([styles.index(x) if x in styles else -1 for x in dom]))
        if with_baselines:
            images = batch["image"].numpy()
            parts["hog"].append(baselines_lib.hog(images, is_sketch))
            if not is_sketch:
                parts["colour_texture"].append(baselines_lib.colour_texture(images))
    if not parts["content_id"]:
        raise ValueError(f"style_sbir: no test records of domains {list(domains)} in {path}")
    return {k: np.concatenate(v) for k, v in parts.items()}


def sketch_only_maps(queries, query_content, gallery, content, style, styles):
    """Sketch-only mAP (relevant = same content, cosine): ({style name: mAP against the
    images of that style}, mAP against the whole gallery).

    Args:
      queries: [K, E] sketch embeddings (or descriptors); query_content: [K].
      gallery: [N, E]; content, style: [N] labels (style = index in `styles`).
    """
    per = {}
    for i, name in enumerate(styles):
        m = style == i
        per[name] = retrieval.retrieval_metrics(
            queries, query_content, gallery[m], content[m], metric="cosine"
        )["map_all"]
    whole = retrieval.retrieval_metrics(queries, query_content, gallery, content, metric="cosine")
    return per, whole["map_all"]


def pick_exemplars(content, style, sketch_content, num_styles: int, seed: int) -> np.ndarray:
    """Exemplar gallery index [Q, S] for every (sketch q, style s): an image of style s whose
    content differs from the sketch's, uniformly at random (seeded). -1 when none exists."""
    rng = np.random.default_rng(seed)
    out = np.full((len(sketch_content), num_styles), -1, np.int64)
    for s in range(num_styles):
        of_style = np.flatnonzero(style == s)
        for q, c in enumerate(sketch_content):
            choices = of_style[content[of_style] != c]
            if len(choices):
                out[q, s] = rng.choice(choices)
    return out


class SimilarityRows:
    """Cosine similarities of query rows to a gallery, computed for the rows indexed:
    ``SimilarityRows(q, g)[idx]`` = ``unit(q[idx]) @ unit(g).T`` (float64 [len(idx), N]), so
    that a [Q, N] matrix never has to exist for a large gallery. An all-zero row has cosine 0
    to everything."""

    def __init__(self, queries, gallery):
        self.queries = _unit_rows(queries)
        self.gallery_t = _unit_rows(gallery).T

    def __getitem__(self, index) -> np.ndarray:
        return np.atleast_2d(self.queries[index]) @ self.gallery_t


def sketch_style_metrics(structure_sim, style_sim, alpha, sketch_content, exemplars, content,
                         style, num_styles) -> dict:  # fmt: skip
    """mAP of the sketch + style queries for one ranking.

    Args:
      structure_sim: [K, N] similarity of each sketch to each gallery image, or a
        `SimilarityRows` (rows computed when needed: large galleries never hold [K, N]).
      style_sim: [N, N] similarity between gallery images (exemplar rows are taken from it),
        or a `SimilarityRows`.
      alpha: structure weight in [0, 1] (`style_models.combined_scores`).
      sketch_content: [K] content of each sketch.
      exemplars: [K, S] gallery index of the exemplar of (sketch, style) (`pick_exemplars`).
      content, style: [N] labels of the gallery.

    Returns:
      `retrieval.metrics_from_scores` of the K * S queries (query q * S + s), with
      per_class keyed by the cell label content * S + style.
    """
    alpha = style_models.check_alpha(alpha)
    k, s = exemplars.shape
    q_sketch = np.repeat(np.arange(k), s)
    q_style = np.tile(np.arange(s), k)
    q_ex = exemplars.reshape(-1)
    keep = q_ex >= 0
    q_sketch, q_style, q_ex = q_sketch[keep], q_style[keep], q_ex[keep]
    q_content = sketch_content[q_sketch]

    # Each block of queries takes its rows only: [K * S, N] is never formed at once.
    def scores(a, b):
        return style_models.combined_scores(structure_sim[q_sketch[a:b]], style_sim[q_ex[a:b]],
                                            alpha)  # fmt: skip

    def relevant(a, b):
        return (content[None] == q_content[a:b, None]) & (style[None] == q_style[a:b, None])

    def excluded(a, b):
        return np.arange(len(content))[None] == q_ex[a:b, None]

    return retrieval.metrics_from_scores(
        scores, relevant, q_content * num_styles + q_style, excluded=excluded,
        num_gallery=len(content),
    )  # fmt: skip


def _mean_of_cells(values) -> float:
    """Mean of the cells that have queries (NaN = a content without sketches)."""
    v = np.asarray(values, np.float64)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def _cells(result, num_contents, num_styles) -> np.ndarray:
    """[C, S] mAP per content x style cell from a result's per_class (NaN when absent)."""
    grid = np.full((num_contents, num_styles), np.nan)
    for label, entry in result["per_class"].items():
        grid[int(label) // num_styles, int(label) % num_styles] = entry["map_all"]
    return grid


def evaluate_task(task, models, workdir=None, alpha: float | None = None) -> dict[str, Any]:
    """`StyleSbirTask.evaluate` (see the module docstring); files only when `workdir` is given.

    `alpha`: the structure weight of the combined score (default `eval.alpha`), in [0, 1].
    """
    e = task.config.eval
    alpha = style_models.check_alpha(e.alpha if alpha is None else alpha, "alpha")
    styles, contents = task.styles(), task.contents()
    n_s, n_c = len(styles), len(contents)
    base = bool(e.baselines)
    sk = embed_test_records(task, models, [task.config.data.sketch_domain],
                            ["structure_sketch"], base)  # fmt: skip
    gal = embed_test_records(task, models, styles, ["structure_image", "style"], base)
    gc, gs, kc = gal["content_id"], gal["style_id"], sk["content_id"]
    missing = [styles[i] for i in range(n_s) if not np.any(gs == i)]
    if missing:
        raise ValueError(
            f"style_sbir: no test images of styles {missing} in {task.records_dir('test')}"
        )
    structure_sim = SimilarityRows(sk["structure_sketch"], gal["structure_image"])
    style_sim = SimilarityRows(gal["style"], gal["style"])
    scalars: dict[str, float] = {}
    tables: dict[str, dict] = {}

    # 1. sketch only, per style and over the whole gallery.
    def sketch_only(q, g):
        return sketch_only_maps(q, kc, g, gc, gs, styles)

    rows_sk = {}
    rows_sk["model"] = sketch_only(sk["structure_sketch"], gal["structure_image"])
    rnd = {}
    for i, name in enumerate(styles):
        m = gs == i
        rnd[name] = retrieval.random_ranking_baseline(
            kc, gc[m], seed=int(task.config.seed), repeats=int(e.baseline_repeats)
        )["map_all"]
    rnd_all = retrieval.random_ranking_baseline(
        kc, gc, seed=int(task.config.seed), repeats=int(e.baseline_repeats)
    )["map_all"]
    rows_sk["random"] = (rnd, rnd_all)
    if base:
        rows_sk["hog"] = sketch_only(sk["hog"], gal["hog"])
    for name, (per, whole) in rows_sk.items():
        prefix = "" if name == "model" else f"{name}/"
        scalars[f"{prefix}sketch_map"] = float(np.mean(list(per.values())))
        scalars[f"{prefix}sketch_map_all_styles"] = float(whole)
        for st, v in per.items():
            scalars[f"{prefix}sketch_map/{st}"] = float(v)
    tables["sketch-only mAP per style (relevant = same content)"] = {
        "header": ["ranking", *styles, "mean", "whole gallery"],
        "rows": [
            [name, *[float(per[s]) for s in styles], float(np.mean(list(per.values()))), float(w)]
            for name, (per, w) in rows_sk.items()
        ],
    }

    # Style branch on its own: every gallery image as a style query against the others
    # (relevant = same style, any content; no self matches), model and colour/texture.
    ids = np.arange(len(gs))
    style_rows = [["model", retrieval.retrieval_metrics(
        gal["style"], gs, gal["style"], gs, metric="cosine", query_ids=ids, gallery_ids=ids
    )["map_all"]]]  # fmt: skip
    if base:
        style_rows.append(["colour + texture", retrieval.retrieval_metrics(
            gal["colour_texture"], gs, gal["colour_texture"], gs, metric="cosine",
            query_ids=ids, gallery_ids=ids,
        )["map_all"]])  # fmt: skip
    style_rows.append(["random", retrieval.random_ranking_baseline(
        gs, gs, seed=int(task.config.seed), repeats=int(e.baseline_repeats)
    )["map_all"]])  # fmt: skip
    for name, value in style_rows:
        key = {"model": "", "colour + texture": "colour_texture/", "random": "random/"}[name]
        scalars[f"{key}style_map"] = float(value)
    tables["style-only mAP (image -> image, relevant = same style)"] = {
        "header": ["ranking", "style_map"],
        "rows": [[n, float(v)] for n, v in style_rows],
    }

    # 2. sketch + style, and 3. its baselines.
    exemplars = pick_exemplars(gc, gs, kc, n_s, int(e.exemplar_seed))
    args = (kc, exemplars, gc, gs, n_s)
    results = {
        "model": sketch_style_metrics(structure_sim, style_sim, alpha, *args),
        "structure_only": sketch_style_metrics(structure_sim, style_sim, 1.0, *args),
        "style_only": sketch_style_metrics(structure_sim, style_sim, 0.0, *args),
    }
    cell_q = np.repeat(kc, n_s) * n_s + np.tile(np.arange(n_s), len(kc))
    cell_q = cell_q[exemplars.reshape(-1) >= 0]
    results["random"] = retrieval.random_ranking_baseline(
        cell_q, gc * n_s + gs, seed=int(task.config.seed), repeats=int(e.baseline_repeats)
    )
    nl_structure = nl_style = None
    if base:
        nl_structure = SimilarityRows(sk["hog"], gal["hog"])
        nl_style = SimilarityRows(gal["colour_texture"], gal["colour_texture"])
        results["non_learned"] = sketch_style_metrics(nl_structure, nl_style, alpha, *args)
    scalars["sketch_style_map"] = float(results["model"]["map_all"])
    for name in BASELINES:
        if name in results:
            scalars[f"{name}/sketch_style_map"] = float(results[name]["map_all"])
    scalars["alpha"] = alpha
    sweep_rows = []
    for a in e.alpha_sweep:
        a = float(a)
        row = [a, float(sketch_style_metrics(structure_sim, style_sim, a, *args)["map_all"])]
        scalars[f"alpha_{a:g}/sketch_style_map"] = row[1]
        if base:
            row.append(float(sketch_style_metrics(nl_structure, nl_style, a, *args)["map_all"]))
            scalars[f"non_learned/alpha_{a:g}/sketch_style_map"] = row[2]
        sweep_rows.append(row)
    scalars.update(
        num_sketches=float(len(kc)), num_gallery=float(len(gc)),
        num_sketch_style_queries=float(len(cell_q)),
    )  # fmt: skip
    grids = {name: _cells(r, n_c, n_s) for name, r in results.items()}
    for name, grid in grids.items():
        rows = []
        for ci, c in enumerate(contents):
            rows.append([c, *[float(v) for v in grid[ci]], _mean_of_cells(grid[ci])])
        rows.append(["mean", *[_mean_of_cells(grid[:, j]) for j in range(n_s)],
                     float(results[name]["map_all"])])  # fmt: skip
        a = {"structure_only": 1.0, "style_only": 0.0}.get(name, alpha)
        label = "model" if name == "model" else f"baseline {name}"
        label += "" if name == "random" else f" (alpha={a:g})"
        tables[f"sketch + style mAP per content x style, {label}"] = {
            "header": ["content \\ style", *styles, "mean"],
            "rows": rows,
        }
    tables["sketch + style mAP: model vs baselines"] = {
        "header": ["ranking", "sketch_style_map"],
        "rows": [[n, float(r["map_all"])] for n, r in results.items()],
    }
    tables["sketch + style mAP over alpha (query-time weight of structure)"] = {
        "header": ["alpha", "model"] + (["non-learned"] if base else []),
        "rows": sweep_rows,
    }

    # 4. pictures.
    heat = plots.heatmap(grids["model"], contents, styles,
                         title=f"sketch + style mAP, alpha={alpha:g}")  # fmt: skip
    grid = _query_grid(task, sk, gal, exemplars, alpha)
    out = {
        "scalars": scalars,
        "tables": tables,
        "images": {
            "sketch_style_map": plots.to_array(heat)[None],
            "query_grid": plots.to_array(grid)[None],
        },
    }
    if workdir:
        eval_dir = os.path.join(workdir, "eval")
        files = {
            "sketch_style_map": plots.save_png(
                heat, os.path.join(eval_dir, "sketch_style_map.png")
            ),
            "query_grid": plots.save_png(grid, os.path.join(eval_dir, "query_grid.png")),
        }
        md = os.path.join(eval_dir, "tables.md")
        write_atomic(md, format_result({"tables": tables}, title="# style_sbir evaluation") + "\n")
        out["files"] = {**{k: str(v) for k, v in files.items()}, "tables": md}
    return out


def _query_grid(task, sk, gal, exemplars, alpha):
    """Sketch, exemplar and top-k results for a few (sketch, style) queries: the first
    sketch of each content in turn, each with the next style."""
    e = task.config.eval
    kc, gc, gs = sk["content_id"], gal["content_id"], gal["style_id"]
    picks = []
    for c in np.unique(kc):
        picks.append(int(np.flatnonzero(kc == c)[0]))
    picks = picks[: int(e.grid_queries)]
    # The results come from the library's index, ranked as the `retrieve` signature ranks:
    # inner products with rows [unit structure, unit style] (`style_sbir.serving`).
    vectors, metric = style_serving.index_vectors(
        task, {"structure": gal["structure_image"], "style": gal["style"]}
    )
    index = GalleryIndex(vectors.shape[1], metric=metric)
    index.add(vectors)
    k = int(e.grid_top_k)
    rows, ex_imgs, res, ok = [], [], [], []
    for i, q in enumerate(picks):
        s = i % exemplars.shape[1]
        x = exemplars[q, s]
        if x < 0:
            continue
        query = style_serving.query_vectors_from_embeddings(
            sk["structure_sketch"][[q]], gal["style"][[x]], alpha
        )
        found = index.search(query, k + 1)[1][0]
        top = found[found != x][:k]  # not the exemplar itself
        rows.append(sk["thumbs"][q])
        ex_imgs.append(gal["thumbs"][x])
        res.append([gal["thumbs"][j] for j in top])
        ok.append((gc[top] == kc[q]) & (gs[top] == s))
    return plots.retrieval_grid(rows, res, np.asarray(ok), thumb_size=48,
                                exemplar_images=ex_imgs)  # fmt: skip
