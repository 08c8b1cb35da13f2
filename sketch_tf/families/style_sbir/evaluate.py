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

   with `alpha` = `eval.alpha` (`StyleSbirEvaluator(task, alpha=)` overrides it at query time).
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

import functools
import os
from typing import Any

import numpy as np

from sketch_tf.core.files import write_atomic
from sketch_tf.data import tfrecord
from sketch_tf.eval import baselines as baselines_lib
from sketch_tf.eval import plots, retrieval
from sketch_tf.eval.report import format_result
from sketch_tf.eval.retrieval import unit_rows
from sketch_tf.families.embedding import embed_labelled_records
from sketch_tf.families.style_sbir import serving as style_serving
from sketch_tf.index import GalleryIndex
from sketch_tf.models import style as style_models

#: Rankings of the sketch + style tables next to the model.
BASELINES = ("random", "structure_only", "style_only", "non_learned")


def embed_test_records(task, models, domains, roles, with_baselines: bool) -> dict:
    """Embeds every test record of `domains` with the towers of `roles` (`task.towers` keys)
    (`embedding.embed_labelled_records`).

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
    if task.uses_feature_cache():
        caches = task.feature_caches(models, "test")
        lookups = {r: caches[r].lookup(f"style_sbir test {r}") for r in roles}
        heads = task.heads(models)
        fns = {r: (lambda b, r=r: heads[r](lookups[r](b["image_key"]), training=False))
               for r in roles}  # fmt: skip
    else:
        towers = task.towers(models)
        fns = {r: (lambda b, r=r: towers[r](b["image"], training=False)) for r in roles}
    descriptors = {}
    if with_baselines:
        descriptors["hog"] = functools.partial(baselines_lib.hog, is_sketch=is_sketch)
        if not is_sketch:
            descriptors["colour_texture"] = baselines_lib.colour_texture
    out = embed_labelled_records(
        path,
        classes=classes,
        domains=domains,
        image_size=int(d.image_size),
        sketch_domain=d.sketch_domain,
        batch_size=int(task.config.eval.batch_size),
        embedders=fns,
        descriptors=descriptors,
        empty_error=f"style_sbir: no test records of domains {list(domains)}",
    )
    ids = out["class_id"]
    if content_of is not None:
        ids = np.array([content_of[int(i)] for i in ids], np.int64)
    result = {r: out[r] for r in roles}
    result["content_id"] = ids
    result["style_id"] = np.array([styles.index(x) if x in styles else -1 for x in out["domain"]])
    result["thumbs"] = out["thumbs"]
    result.update({name: out[name] for name in descriptors})
    return result


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
        self.queries = unit_rows(np.asarray(queries, np.float64))
        self.gallery_t = unit_rows(np.asarray(gallery, np.float64)).T

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


def embed_test_set(task, models, with_baselines: bool) -> tuple[dict, dict]:
    """(sketches, gallery): `embed_test_records` of the test sketches (structure tower) and
    of the test images of every gallery style (structure and style towers).

    Raises:
      ValueError: a gallery style has no test image (naming the records).
    """
    styles = task.styles()
    sk = embed_test_records(task, models, [task.config.data.sketch_domain],
                            ["structure_sketch"], with_baselines)  # fmt: skip
    gal = embed_test_records(task, models, styles, ["structure_image", "style"], with_baselines)
    missing = [name for i, name in enumerate(styles) if not np.any(gal["style_id"] == i)]
    if missing:
        raise ValueError(
            f"style_sbir: no test images of styles {missing} in {task.records_dir('test')}"
        )
    return sk, gal


def _random_map(task, queries, gallery) -> float:
    """mAP of `retrieval.random_ranking_baseline` (seeded with `config.seed`)."""
    e = task.config.eval
    return retrieval.random_ranking_baseline(
        queries, gallery, seed=int(task.config.seed), repeats=int(e.baseline_repeats)
    )["map_all"]


def sketch_only_figures(task, sk, gal, with_baselines: bool) -> tuple[dict, dict]:
    """1. Sketch-only mAP (relevant = same content) per style and over the whole gallery, of
    the model, a random ranking and (`with_baselines`) HOG: (scalars, tables)."""
    styles = task.styles()
    kc, gc, gs = sk["content_id"], gal["content_id"], gal["style_id"]

    def sketch_only(q, g):
        return sketch_only_maps(q, kc, g, gc, gs, styles)

    rows_sk = {"model": sketch_only(sk["structure_sketch"], gal["structure_image"])}
    rnd = {name: _random_map(task, kc, gc[gs == i]) for i, name in enumerate(styles)}
    rows_sk["random"] = (rnd, _random_map(task, kc, gc))
    if with_baselines:
        rows_sk["hog"] = sketch_only(sk["hog"], gal["hog"])
    scalars = {}
    for name, (per, whole) in rows_sk.items():
        prefix = "" if name == "model" else f"{name}/"
        scalars[f"{prefix}sketch_map"] = float(np.mean(list(per.values())))
        scalars[f"{prefix}sketch_map_all_styles"] = float(whole)
        for st, v in per.items():
            scalars[f"{prefix}sketch_map/{st}"] = float(v)
    table = {
        "header": ["ranking", *styles, "mean", "whole gallery"],
        "rows": [
            [name, *[float(per[s]) for s in styles], float(np.mean(list(per.values()))), float(w)]
            for name, (per, w) in rows_sk.items()
        ],
    }
    return scalars, {"sketch-only mAP per style (relevant = same content)": table}


def style_only_figures(task, gal, with_baselines: bool) -> tuple[dict, dict]:
    """The style branch on its own: every gallery image as a style query against the others
    (relevant = same style, any content; no self matches), model, colour/texture (with
    `with_baselines`) and random: (scalars, tables)."""
    gs = gal["style_id"]
    ids = np.arange(len(gs))

    def style_map(descriptors):
        return retrieval.retrieval_metrics(descriptors, gs, descriptors, gs, metric="cosine",
                                           query_ids=ids, gallery_ids=ids)["map_all"]  # fmt: skip

    rows = [["model", style_map(gal["style"])]]
    if with_baselines:
        rows.append(["colour + texture", style_map(gal["colour_texture"])])
    rows.append(["random", _random_map(task, gs, gs)])
    prefixes = {"model": "", "colour + texture": "colour_texture/", "random": "random/"}
    scalars = {f"{prefixes[name]}style_map": float(value) for name, value in rows}
    table = {"header": ["ranking", "style_map"], "rows": [[n, float(v)] for n, v in rows]}
    return scalars, {"style-only mAP (image -> image, relevant = same style)": table}


def similarities(sk, gal, with_baselines: bool) -> dict[str, tuple]:
    """{"model": (structure, style) `SimilarityRows`, and with `with_baselines`
    "non_learned": those of HOG (structure) and colour/texture (style)}."""
    out = {
        "model": (
            SimilarityRows(sk["structure_sketch"], gal["structure_image"]),
            SimilarityRows(gal["style"], gal["style"]),
        )
    }
    if with_baselines:
        out["non_learned"] = (
            SimilarityRows(sk["hog"], gal["hog"]),
            SimilarityRows(gal["colour_texture"], gal["colour_texture"]),
        )
    return out


def sketch_style_rankings(task, sk, gal, sims, exemplars, alpha: float) -> dict[str, dict]:
    """2. and 3.: `sketch_style_metrics` of the sketch + style queries for the model (at
    `alpha`), "structure_only" (alpha = 1), "style_only" (alpha = 0), "random" and, when
    `sims` has it, "non_learned" (at `alpha`)."""
    n_s = len(task.styles())
    kc, gc, gs = sk["content_id"], gal["content_id"], gal["style_id"]
    args = (kc, exemplars, gc, gs, n_s)
    structure_sim, style_sim = sims["model"]
    results = {
        "model": sketch_style_metrics(structure_sim, style_sim, alpha, *args),
        "structure_only": sketch_style_metrics(structure_sim, style_sim, 1.0, *args),
        "style_only": sketch_style_metrics(structure_sim, style_sim, 0.0, *args),
    }
    e = task.config.eval
    results["random"] = retrieval.random_ranking_baseline(
        _query_cells(kc, exemplars), gc * n_s + gs, seed=int(task.config.seed),
        repeats=int(e.baseline_repeats),
    )  # fmt: skip
    if "non_learned" in sims:
        results["non_learned"] = sketch_style_metrics(*sims["non_learned"], alpha, *args)
    return results


def _query_cells(sketch_content, exemplars) -> np.ndarray:
    """Cell label content * S + style of every sketch + style query with an exemplar."""
    n_s = exemplars.shape[1]
    cells = np.repeat(sketch_content, n_s) * n_s + np.tile(np.arange(n_s), len(sketch_content))
    return cells[exemplars.reshape(-1) >= 0]


def alpha_sweep(task, sk, gal, sims, exemplars) -> list[list[float]]:
    """Rows [alpha, model mAP, (non-learned mAP when `sims` has it)] of the sketch + style
    queries for every alpha of `eval.alpha_sweep`."""
    args = (sk["content_id"], exemplars, gal["content_id"], gal["style_id"], len(task.styles()))
    rows = []
    for a in task.config.eval.alpha_sweep:
        a = float(a)
        rows.append([a] + [float(sketch_style_metrics(*sims[name], a, *args)["map_all"])
                           for name in ("model", "non_learned") if name in sims])  # fmt: skip
    return rows


def sketch_style_scalars(results, sweep_rows, alpha: float) -> dict[str, float]:
    """Scalars of the sketch + style queries: the model's mAP, each baseline's, alpha and the
    sweep (`alpha_<a>/...`, `non_learned/alpha_<a>/...`)."""
    scalars = {"sketch_style_map": float(results["model"]["map_all"])}
    for name in BASELINES:
        if name in results:
            scalars[f"{name}/sketch_style_map"] = float(results[name]["map_all"])
    scalars["alpha"] = alpha
    for row in sweep_rows:
        scalars[f"alpha_{row[0]:g}/sketch_style_map"] = row[1]
        if len(row) > 2:
            scalars[f"non_learned/alpha_{row[0]:g}/sketch_style_map"] = row[2]
    return scalars


def sketch_style_tables(task, results, grids, sweep_rows, alpha: float) -> dict[str, dict]:
    """Tables of the sketch + style queries: per content x style cell for every ranking
    (`grids`: ranking -> [C, S] mAP), the rankings side by side, and the alpha sweep."""
    styles, contents = task.styles(), task.contents()
    tables = {}
    for name, grid in grids.items():
        rows = []
        for ci, c in enumerate(contents):
            rows.append([c, *[float(v) for v in grid[ci]], _mean_of_cells(grid[ci])])
        rows.append(["mean", *[_mean_of_cells(grid[:, j]) for j in range(len(styles))],
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
        "header": ["alpha", "model"] + (["non-learned"] if "non_learned" in results else []),
        "rows": sweep_rows,
    }
    return tables


def pictures(task, sk, gal, exemplars, grids, alpha: float) -> dict:
    """4. The PIL pictures: "sketch_style_map" (heat-map of the model's content x style
    table) and "query_grid" (`_query_grid`)."""
    heat = plots.heatmap(grids["model"], task.contents(), task.styles(),
                         title=f"sketch + style mAP, alpha={alpha:g}")  # fmt: skip
    return {"sketch_style_map": heat, "query_grid": _query_grid(task, sk, gal, exemplars, alpha)}


def write_files(pictures_by_name: dict, tables: dict, workdir: str) -> dict[str, str]:
    """Writes the pictures (`<name>.png`) and every table as Markdown (`tables.md`) under
    `<workdir>/eval`; returns {name: path} (the tables as "tables")."""
    eval_dir = os.path.join(workdir, "eval")
    files = {
        name: str(plots.save_png(picture, os.path.join(eval_dir, f"{name}.png")))
        for name, picture in pictures_by_name.items()
    }
    md = os.path.join(eval_dir, "tables.md")
    write_atomic(md, format_result({"tables": tables}, title="# style_sbir evaluation") + "\n")
    return {**files, "tables": md}


class StyleSbirEvaluator:
    """The `Evaluator` of the style-aware SBIR family (see the module docstring).

    Args:
      task: the `StyleSbirTask`.
      alpha: the structure weight of the combined score (default `eval.alpha`), in [0, 1]
        (ValueError otherwise).
    """

    name = "style_sbir/retrieval"

    def __init__(self, task, alpha: float | None = None):
        self.task = task
        e = task.config.eval
        self.alpha = style_models.check_alpha(e.alpha if alpha is None else alpha, "alpha")

    def run(self, models, workdir=None) -> dict[str, Any]:
        """Scalars, tables and pictures of the module docstring; files only when `workdir`
        is given."""
        task, alpha = self.task, self.alpha
        e = task.config.eval
        base = bool(e.baselines)
        sk, gal = embed_test_set(task, models, base)
        scalars, tables = {}, {}
        for part_scalars, part_tables in (
            sketch_only_figures(task, sk, gal, base),
            style_only_figures(task, gal, base),
        ):
            scalars.update(part_scalars)
            tables.update(part_tables)
        sims = similarities(sk, gal, base)
        exemplars = pick_exemplars(gal["content_id"], gal["style_id"], sk["content_id"],
                                   len(task.styles()), int(e.exemplar_seed))  # fmt: skip
        results = sketch_style_rankings(task, sk, gal, sims, exemplars, alpha)
        sweep_rows = alpha_sweep(task, sk, gal, sims, exemplars)
        scalars.update(sketch_style_scalars(results, sweep_rows, alpha))
        scalars.update(
            num_sketches=float(len(sk["content_id"])),
            num_gallery=float(len(gal["content_id"])),
            num_sketch_style_queries=float(len(_query_cells(sk["content_id"], exemplars))),
        )
        n_c, n_s = len(task.contents()), len(task.styles())
        grids = {name: _cells(r, n_c, n_s) for name, r in results.items()}
        tables.update(sketch_style_tables(task, results, grids, sweep_rows, alpha))
        drawn = pictures(task, sk, gal, exemplars, grids, alpha)
        out = {
            "scalars": scalars,
            "tables": tables,
            "images": {name: plots.to_array(p)[None] for name, p in drawn.items()},
        }
        if workdir:
            out["files"] = write_files(drawn, tables, workdir)
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
    vectors, metric = style_serving.StyleSbirRetrieval(task).index_vectors(
        {"structure": gal["structure_image"], "style": gal["style"]}
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
