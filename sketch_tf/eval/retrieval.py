"""Retrieval metrics for sketch-based image retrieval: category-level (zero-shot SBIR: a
gallery item is relevant when it shares the query's class) and instance-level (fine-grained
SBIR: each query has one true match; `instance_retrieval_metrics`, acc@K and mean rank with
the same ranking and tie rule, see its docstring).

Protocol (what every figure this module returns means):

* **Gallery.** All test photos of the evaluated (unseen) classes; every sketch query of those
  classes is ranked against the whole gallery. A gallery item is *relevant* to a query when its
  class label equals the query's label.
* **Similarity.** ``metric="euclidean"``: ``score = -||q - g||_2`` (non-squared; the ranking is the
  same as for squared distances). ``metric="cosine"``: ``score = <q, g> / (||q|| ||g||)``. Higher
  score = more similar. Scores are computed in float64 whatever the embedding dtype.
* **No self matches.** When ``query_ids`` and ``gallery_ids`` are both given, gallery items whose
  id equals the query's id are removed from that query's ranking (they count neither as relevant
  nor as retrieved). Needed when queries and gallery come from the same set (photo -> photo).
* **Ranking and ties.** The ranked list is a *stable* sort by descending score, so tied items keep
  ascending gallery order. That order decides which items fall inside a top-k cut (P@k, mAP@200,
  the retrieval grids).
* **mAP@all** (``map_all``). Mean over queries of the average precision computed exactly like
  ``sklearn.metrics.average_precision_score(relevant, scores)``: ``AP = sum_n (R_n - R_{n-1}) P_n``
  over the *distinct* score thresholds, i.e. a group of tied items enters the curve as one step and
  the result does not depend on the order inside the group. A query with no relevant gallery item
  has AP 0.0 (scikit-learn also returns 0 there, with a warning); such queries stay in the mean
  and are counted in ``num_queries_without_relevant``.
* **mAP@all, SAKE/VOC style** (``map_all_sake``, :func:`average_precision_sake`). SAKE's
  ``eval_AP_inner`` + ``VOCap`` (``src/test_cse_resnet_tuberlin_zeroshot.py``, imported by its
  Sketchy script): the precision curve is made monotone (``p_interp(k) = max_{j >= k} P_j``) and
  summed at every relevant rank, divided by the number of relevant items. Always >= ``map_all``
  (0.233 vs 0.214 for random rankings of 300 items with 60 relevant). No tie grouping (SAKE ranks
  with ``np.argsort(-scores)``; we use our stable ranking). SAKE gets NaN for a query without
  relevant items and averages with ``np.nanmean``; we count 0.0 as for ``map_all``.
* **mAP@200** (``map_200``). The public evaluation codes disagree, so both are reported:

  - ``map_200`` (SEM-PCYC definition: ``utils.apsak(sim, str_sim, k=200)`` in its public
    ``src/utils.py``, called from ``src/test.py``): ``average_precision_score`` on the 200
    best-ranked items (``(-sim).argsort()[:, :200]``), i.e. AP over the top-200 list only,
    normalised by the number of relevant items *retrieved in the top 200* (0.0 when none is
    retrieved), ties inside the list grouped as for mAP@all. Equal to
    ``average_precision_score`` applied to the top-200 slice of our ranking. (Doodle-to-Search's
    ``src/test.py`` has the same top-200 computation, but commented out: its live code reports
    mAP@all only.)
  - ``map_200_sake`` (SAKE's ``eval_AP_inner(..., top=200)`` + ``VOCap``): VOC-style
    *interpolated* precision (``max`` precision at any later rank) summed at each relevant rank of
    the top-200 list and normalised by ``min(200, number of relevant items in the gallery)``. No
    tie grouping (SAKE sorts with ``np.argsort(-scores)``; we use our stable ranking).

  Which figure a paper reports (checked in the public evaluation code): scikit-learn AP
  (``map_all``, ``map_200``) in SEM-PCYC (Dutta & Akata, CVPR 2019), Doodle-to-Search
  (Dey et al., CVPR 2019; mAP@all only) and the zero-shot SBIR GRL code this project reimplements
  (ashok-arjun/Zero-Shot-Sketch-Based-Image-Retrieval, ``evaluate.py``, mAP@all only);
  VOC-interpolated AP (``map_all_sake``, ``map_200_sake``) in SAKE (Liu et al., ICCV 2019) and
  in the papers that reuse SAKE's evaluation script. Compare a figure only with figures of the
  same definition.

* **P@k** (``p_100``, ``p_200``). Relevant items among the top ``k`` ranked ones divided by ``k``
  (by the number of ranked items instead when the gallery holds fewer than ``k``, as SAKE's
  ``eval_precision`` does).
* **Per class.** The same metrics averaged over the queries of each class (``per_class``).

Everything is computed in query chunks whose working set stays under ``max_chunk_bytes``
(argsort of a ``[chunk, num_gallery]`` block), so 10k queries x 100k photos fit in a few hundred
MB. Pure NumPy: this runs in ``evaluate.py`` after the embeddings are computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_METRICS = ("euclidean", "cosine")


def as_finite_2d(
    name: str, x, shape_error: str = "{name}: expected a 2-D array [count, dim], got shape {shape}"
) -> np.ndarray:
    """`x` as a float64 [count, dim] array with finite values (embeddings, descriptors).

    Raises ValueError naming `name`: `shape_error` (formatted with `name` and `shape`) when `x`
    is not 2-D, "<name>: contains NaN or infinite values" when a value is not finite.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(shape_error.format(name=name, shape=arr.shape))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def unit_rows(x) -> np.ndarray:
    """The rows of `x` [N, D] scaled to unit L2 norm, all-zero rows left zero; float dtype kept.

    Cosine rankings are computed on unit rows (as the Euclidean distance or inner product),
    so that a blank image's all-zero descriptor scores 0 against everything instead of
    failing or giving NaN.
    """
    x = np.asarray(x)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _as_labels(name: str, x, count: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != count:
        raise ValueError(f"{name}: expected a 1-D array of length {count}, got shape {arr.shape}")
    return arr


def similarity(queries: np.ndarray, gallery: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Similarity matrix between query and gallery embeddings (higher = more similar).

    Args:
      queries: float array [Q, D].
      gallery: float array [N, D].
      metric: ``"euclidean"`` (score = minus the L2 distance) or ``"cosine"``.

    Returns:
      float64 array [Q, N].
    """
    if metric not in _METRICS:
        raise ValueError(f"metric: expected one of {_METRICS}, got {metric!r}")
    q = np.asarray(queries, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"queries {q.shape} and gallery {g.shape}: expected [Q, D] and [N, D] with equal D"
        )
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        gn = np.linalg.norm(g, axis=1, keepdims=True)
        if np.any(qn == 0) or np.any(gn == 0):
            raise ValueError("cosine similarity: an embedding has zero norm")
        return (q / qn) @ (g / gn).T
    d2 = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * (q @ g.T)
    return -np.sqrt(np.maximum(d2, 0.0))


def _tie_grouped_ap(rel: np.ndarray, scores: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """AP of rows already sorted by descending score, ties grouped as scikit-learn does.

    rel: bool [B, M]; scores: float [B, M] (non-increasing along each row); denom: [B] number
    the precision sum is divided by (rows with denom 0 get AP 0).
    """
    b, m = rel.shape
    if m == 0:
        return np.zeros(b)
    cumtp = np.cumsum(rel, axis=1, dtype=np.int64)
    ranks = np.arange(1, m + 1, dtype=np.float64)
    # A tie group ends where the next score differs (or at the end of the row). Every relevant
    # item is credited with the precision measured at the end of its group, which is exactly
    # sklearn's sum over distinct thresholds of (recall step) x (precision at that threshold).
    is_end = np.ones((b, m), dtype=bool)
    is_end[:, :-1] = scores[:, 1:] != scores[:, :-1]
    end_idx = np.where(is_end, np.arange(m)[None, :], m)
    end_idx = np.minimum.accumulate(end_idx[:, ::-1], axis=1)[:, ::-1]
    prec_at_end = cumtp / ranks[None, :]
    prec_of_item = np.take_along_axis(prec_at_end, end_idx, axis=1)
    total = np.where(rel, prec_of_item, 0.0).sum(axis=1)
    denom = np.asarray(denom, dtype=np.float64)
    return np.divide(total, denom, out=np.zeros(b), where=denom > 0)


def _interpolated_ap(rel: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """SAKE/VOC interpolated AP of rows sorted by descending score, divided by denom [B]."""
    b, m = rel.shape
    if m == 0:
        return np.zeros(b)
    prec = np.cumsum(rel, axis=1) / np.arange(1, m + 1, dtype=np.float64)[None, :]
    interp = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    total = np.where(rel, interp, 0.0).sum(axis=1)
    denom = np.asarray(denom, dtype=np.float64)
    return np.divide(total, denom, out=np.zeros(b), where=denom > 0)


def _one_query(scores, relevant) -> tuple[np.ndarray, np.ndarray]:
    """Checked (scores float64 [N], relevant [N]) of one query; ValueError on bad shapes/NaN."""
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(relevant)
    if s.ndim != 1 or r.shape != s.shape:
        raise ValueError(
            f"scores {s.shape} and relevant {r.shape}: expected two 1-D arrays of equal length"
        )
    if np.any(np.isnan(s)):
        raise ValueError("scores: contains NaN")
    return s, r


def average_precision(scores, relevant) -> float:
    """Average precision of one query, equal to ``sklearn.metrics.average_precision_score``.

    Args:
      scores: float array [N], higher = more similar. ``-inf`` is allowed (ranked last).
      relevant: bool array [N], True for gallery items of the query's class.

    Returns:
      AP in [0, 1] as a Python float; tied scores are grouped (order-independent, as in
      scikit-learn). 0.0 when no item is relevant (scikit-learn returns 0 there too, with a
      warning).
    """
    s, r = _one_query(scores, relevant)
    r = r.astype(bool)
    order = np.argsort(-s, kind="stable")
    ap = _tie_grouped_ap(r[order][None, :], s[order][None, :], np.array([r.sum()]))
    return float(ap[0])


def average_precision_sake(scores, relevant, top: int | None = None) -> float:
    """SAKE's VOC-style interpolated average precision of one query (``map_all_sake``).

    Ranks by descending score (stable: ties keep input order), takes the precision ``P_k`` at
    every rank ``k`` of the first ``top`` ranks (all when None), replaces it by its upper envelope
    ``max_{j >= k} P_j`` and sums the envelope over the relevant ranks; the sum is divided by the
    number of relevant items, ``min(top, that number)`` when ``top`` is given. This is SAKE's
    ``eval_AP_inner(..., top)`` + ``VOCap``: VOCap's recall steps are ``1 / denominator`` at each
    relevant rank and its appended end point (recall 1, precision 0) adds nothing.

    Args:
      scores: float array [N], higher = more similar. ``-inf`` is allowed (ranked last).
      relevant: bool array [N], True for gallery items of the query's class.
      top: optional cut-off (``top=200`` gives ``map_200_sake``).

    Returns:
      AP in [0, 1] as a Python float; 0.0 when no item is relevant (SAKE gets NaN there).
    """
    s, r = _one_query(scores, relevant)
    if top is not None and int(top) <= 0:
        raise ValueError(f"top: expected a positive cut-off, got {top}")
    r = r.astype(bool)
    ranked = r[np.argsort(-s, kind="stable")]
    n_rel = int(r.sum())
    if top is not None:
        ranked = ranked[: int(top)]
        n_rel = min(int(top), n_rel)
    return float(_interpolated_ap(ranked[None, :], np.array([n_rel]))[0])


def _metrics_from_scores(
    scores: np.ndarray,
    rel: np.ndarray,
    valid_count: np.ndarray,
    precision_at: Sequence[int],
    map_at: Sequence[int],
) -> dict[str, np.ndarray]:
    """Per-query metrics for a chunk. scores [B, N] float (excluded items at -inf), rel [B, N]."""
    order = np.argsort(-scores, axis=1, kind="stable")
    s_sorted = np.take_along_axis(scores, order, axis=1)
    r_sorted = np.take_along_axis(rel, order, axis=1)
    n_rel = r_sorted.sum(axis=1)
    out = {
        "map_all": _tie_grouped_ap(r_sorted, s_sorted, n_rel),
        "map_all_sake": _interpolated_ap(r_sorted, n_rel),
        "num_relevant": n_rel,
    }
    cumtp = np.cumsum(r_sorted, axis=1)
    for k in precision_at:
        kk = np.minimum(k, valid_count)
        hits = np.where(kk > 0, cumtp[np.arange(len(kk)), np.maximum(kk - 1, 0)], 0)
        out[f"p_{k}"] = np.divide(hits, kk, out=np.zeros(len(kk)), where=kk > 0)
    for k in map_at:
        kc = min(k, scores.shape[1])
        top_rel, top_s = r_sorted[:, :kc], s_sorted[:, :kc]
        # Excluded items (self matches) sit at -inf at the end; they are never relevant, and a
        # cut that reaches them only happens when fewer than k valid items exist.
        out[f"map_{k}"] = _tie_grouped_ap(top_rel, top_s, top_rel.sum(axis=1))
        out[f"map_{k}_sake"] = _interpolated_ap(top_rel, np.minimum(k, n_rel))
    return out


def _summarise(
    per_query: dict[str, np.ndarray], query_labels: np.ndarray, metric_keys: list[str]
) -> dict:
    result = {
        key: float(np.mean(per_query[key])) if len(query_labels) else 0.0 for key in metric_keys
    }
    per_class = {}
    for label in np.unique(query_labels):
        mask = query_labels == label
        entry = {key: float(np.mean(per_query[key][mask])) for key in metric_keys}
        entry["num_queries"] = int(mask.sum())
        entry["num_relevant"] = float(np.mean(per_query["num_relevant"][mask]))
        per_class[label.item() if hasattr(label, "item") else label] = entry
    result["per_class"] = per_class
    result["num_queries_without_relevant"] = int(np.sum(per_query["num_relevant"] == 0))
    return result


def _metric_keys(precision_at: Sequence[int], map_at: Sequence[int]) -> list[str]:
    keys = ["map_all", "map_all_sake"] + [f"p_{k}" for k in precision_at]
    return keys + [f"map_{k}" for k in map_at] + [f"map_{k}_sake" for k in map_at]


def _chunk_rows(num_gallery: int, max_chunk_bytes: int) -> int:
    # Up to ~16 [chunk, N] 8-byte arrays are alive at once (scores, sort order, sorted copies,
    # cumulative sums, tie-group indices and temporaries), measured with bench/retrieval_bench.py;
    # 4 more for the interpolated precision of map_all_sake (estimated, not re-measured).
    return max(1, int(max_chunk_bytes // max(1, 20 * 8 * num_gallery)))


def retrieval_metrics(
    query_embeddings,
    query_labels,
    gallery_embeddings,
    gallery_labels,
    metric: str = "euclidean",
    query_ids=None,
    gallery_ids=None,
    precision_at: Sequence[int] = (100, 200),
    map_at: Sequence[int] = (200,),
    max_chunk_bytes: int = 256 * 2**20,
    return_per_query: bool = False,
) -> dict:
    """Retrieval metrics of sketch queries against a photo gallery (protocol in module docstring).

    Args:
      query_embeddings: float [Q, D].
      query_labels: [Q] class labels (ints or strings).
      gallery_embeddings: float [N, D].
      gallery_labels: [N] class labels, same kind as ``query_labels``.
      metric: ``"euclidean"`` or ``"cosine"``.
      query_ids, gallery_ids: optional [Q] / [N] item ids; when both are given a gallery item
        with the query's id is excluded from that query's ranking (no self matches).
      precision_at: cut-offs k for ``p_{k}``.
      map_at: cut-offs k for ``map_{k}`` (SEM-PCYC) and ``map_{k}_sake`` (SAKE).
      max_chunk_bytes: memory budget of one query chunk.
      return_per_query: also return ``per_query`` {metric: float array [Q]}.

    Returns:
      dict with ``map_all``, ``map_all_sake``, ``map_200``, ``map_200_sake``, ``p_100``,
      ``p_200`` (floats in
      [0, 1]), ``per_class`` {label: {same keys, num_queries, num_relevant}}, ``num_queries``,
      ``num_gallery``, ``num_queries_without_relevant``, ``metric``.
    """
    q = as_finite_2d("query_embeddings", query_embeddings)
    g = as_finite_2d("gallery_embeddings", gallery_embeddings)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query_embeddings dim {q.shape[1]} != gallery_embeddings dim {g.shape[1]}"
        )
    ql = _as_labels("query_labels", query_labels, q.shape[0])
    gl = _as_labels("gallery_labels", gallery_labels, g.shape[0])
    if metric not in _METRICS:
        raise ValueError(f"metric: expected one of {_METRICS}, got {metric!r}")
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError(
            "query_ids and gallery_ids: give both (to exclude self matches) or neither"
        )
    qid = None if query_ids is None else _as_labels("query_ids", query_ids, q.shape[0])
    gid = None if gallery_ids is None else _as_labels("gallery_ids", gallery_ids, g.shape[0])
    for k in list(precision_at) + list(map_at):
        if int(k) <= 0:
            raise ValueError(f"precision_at / map_at: cut-offs must be positive, got {k}")

    if not q.shape[0]:
        raise ValueError("query_embeddings: no queries given")
    excluded = None
    if qid is not None:  # no self matches

        def excluded(a, b):
            return qid[a:b, None] == gid[None, :]

    result = metrics_from_scores(
        lambda a, b: similarity(q[a:b], g, metric),
        lambda a, b: ql[a:b, None] == gl[None, :],
        ql,
        excluded=excluded,
        num_gallery=g.shape[0],
        precision_at=precision_at,
        map_at=map_at,
        max_chunk_bytes=max_chunk_bytes,
        return_per_query=return_per_query,
    )
    result["metric"] = metric
    return result


def metrics_from_scores(
    scores,
    relevant,
    query_labels,
    excluded=None,
    num_gallery: int | None = None,
    precision_at: Sequence[int] = (100, 200),
    map_at: Sequence[int] = (200,),
    max_chunk_bytes: int = 256 * 2**20,
    return_per_query: bool = False,
) -> dict:
    """`retrieval_metrics` on precomputed scores and relevance (the same protocol: stable
    ranking by descending score, tie-grouped AP, excluded items removed from the ranking).

    For rankings that are not a single embedding distance, e.g. the combined structure +
    style score of style-aware SBIR, whose relevance (same content *and* style) is not a
    label match either.

    Args:
      scores: float [Q, N] (higher = more similar), or a function (start, stop) -> the rows
        [stop - start, N] (computed per query chunk, so [Q, N] never has to exist at once).
      relevant: bool [Q, N] or such a function.
      query_labels: [Q] group of each query, for `per_class` (e.g. its content x style cell).
      excluded: optional bool [Q, N] or function: items removed from a query's ranking (its
        exemplar image; neither relevant nor retrieved).
      num_gallery: N (needed when `scores` is a function).

    Returns:
      the dict of `retrieval_metrics` (metric "precomputed").
    """
    ql = np.asarray(query_labels)
    if ql.ndim != 1 or not len(ql):
        raise ValueError(f"query_labels: expected a non-empty 1-D array, got shape {ql.shape}")

    def rows_of(x, name):
        if callable(x):
            return x
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[0] != len(ql):
            raise ValueError(f"{name}: expected [{len(ql)}, N], got shape {arr.shape}")
        return lambda a, b: arr[a:b]

    score_rows = rows_of(scores, "scores")
    rel_rows = rows_of(relevant, "relevant")
    excl_rows = None if excluded is None else rows_of(excluded, "excluded")
    n = int(num_gallery) if num_gallery is not None else int(np.shape(scores)[1])
    rows = _chunk_rows(n, max_chunk_bytes)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(ql), rows):
        stop = min(start + rows, len(ql))
        sc = np.array(score_rows(start, stop), dtype=np.float64)
        rel = np.array(rel_rows(start, stop), dtype=bool)
        if sc.shape != (stop - start, n) or rel.shape != sc.shape:
            raise ValueError(
                f"scores rows {sc.shape} / relevant rows {rel.shape}: expected {(stop - start, n)}"
            )
        if not np.all(np.isfinite(sc)):
            raise ValueError("scores: contains NaN or inf")
        valid = np.full(stop - start, n, dtype=np.int64)
        if excl_rows is not None:
            ex = np.asarray(excl_rows(start, stop), dtype=bool)
            sc[ex] = -np.inf
            rel &= ~ex
            valid -= ex.sum(axis=1)
        chunk = _metrics_from_scores(sc, rel, valid, precision_at, map_at)
        for key, val in chunk.items():
            parts.setdefault(key, []).append(val)
    per_query = {key: np.concatenate(val) for key, val in parts.items()}
    result = _summarise(per_query, ql, _metric_keys(precision_at, map_at))
    result.update(num_queries=int(len(ql)), num_gallery=n, metric="precomputed")
    if return_per_query:
        result["per_query"] = per_query
    return result


def expected_random_ap(num_relevant: int, num_gallery: int) -> float:
    """Exact expected AP of a uniformly random ranking (no ties).

    With n relevant among N items, position k is relevant with probability n/N and, given that,
    holds on average ``1 + (k-1)(n-1)/(N-1)`` relevant items in the top k, so
    ``E[AP] = (H_N + (n-1)/(N-1) * (N - H_N)) / N`` with ``H_N`` the N-th harmonic number.
    """
    n, big_n = int(num_relevant), int(num_gallery)
    if n <= 0 or big_n <= 0:
        return 0.0
    if big_n == 1:
        return 1.0
    h = float(np.sum(1.0 / np.arange(1, big_n + 1)))
    return (h + (n - 1) / (big_n - 1) * (big_n - h)) / big_n


def random_ranking_baseline(
    query_labels,
    gallery_labels,
    seed: int = 0,
    repeats: int = 10,
    precision_at: Sequence[int] = (100, 200),
    map_at: Sequence[int] = (200,),
    max_chunk_bytes: int = 256 * 2**20,
) -> dict:
    """Metrics of a random ranking, the baseline row printed next to a model's figures.

    Random metrics depend on a query only through its class, so each class is simulated
    ``repeats`` times with i.i.d. uniform scores over the whole gallery and the per-class means are
    weighted by the class's query count. The result has the keys of :func:`retrieval_metrics`
    plus ``expected_map_all`` and ``expected_p_{k}``: the exact expectations (closed form,
    :func:`expected_random_ap`; P@k is ``num_relevant / num_gallery``) the Monte Carlo estimates
    approach.

    Args:
      query_labels: [Q] class labels.
      gallery_labels: [N] class labels.
      seed: seed of the random scores.
      repeats: random rankings per class.
    """
    ql = np.asarray(query_labels)
    gl = np.asarray(gallery_labels)
    if ql.ndim != 1 or gl.ndim != 1 or len(gl) == 0:
        raise ValueError(
            f"query_labels {ql.shape} / gallery_labels {gl.shape}: expected non-empty 1-D arrays"
        )
    if repeats <= 0:
        raise ValueError(f"repeats: expected a positive count, got {repeats}")
    rng = np.random.default_rng(seed)
    n = len(gl)
    keys = _metric_keys(precision_at, map_at)
    rows = _chunk_rows(n, max_chunk_bytes)
    per_query = {key: np.zeros(len(ql)) for key in keys}
    per_query["num_relevant"] = np.zeros(len(ql))
    exact = {"expected_map_all": np.zeros(len(ql))}
    exact.update({f"expected_p_{k}": np.zeros(len(ql)) for k in precision_at})
    for label in np.unique(ql):
        mask = ql == label
        rel_row = gl == label
        sums = dict.fromkeys(keys, 0.0)
        done = 0
        while done < repeats:
            b = min(rows, repeats - done)
            scores = rng.random((b, n))
            rel = np.broadcast_to(rel_row, (b, n))
            chunk = _metrics_from_scores(scores, rel, np.full(b, n), precision_at, map_at)
            for key in keys:
                sums[key] += float(chunk[key].sum())
            done += b
        for key in keys:
            per_query[key][mask] = sums[key] / repeats
        nrel = int(rel_row.sum())
        per_query["num_relevant"][mask] = nrel
        exact["expected_map_all"][mask] = expected_random_ap(nrel, n)
        for k in precision_at:
            exact[f"expected_p_{k}"][mask] = nrel / n
    result = _summarise(per_query, ql, keys)
    result.update({key: float(np.mean(val)) for key, val in exact.items()})
    result.update(num_queries=int(len(ql)), num_gallery=int(n), metric="random", repeats=repeats)
    return result


# ---- instance-level (fine-grained) retrieval -------------------------------------------------
def match_ranks(scores, match=None) -> np.ndarray:
    """1-based rank of each query's true match in its ranked gallery.

    The ranking is this module's: a stable sort by descending score, so the true match ranks
    after every item with a higher score and after the *tied* items that come before it in
    gallery order (a tie never flatters the model).

    Args:
      scores: float [Q, N], higher = more similar (`similarity`).
      match: int [Q], the gallery row of each query's true match; None = row i for query i
        (sketch i drawn from image i, the fine-grained SBIR datasets' convention).

    Returns:
      int64 [Q] ranks in 1..N.
    """
    s = as_finite_2d(
        "scores", scores, "{name}: expected a 2-D array [queries, gallery], got {shape}"
    )
    q, n = s.shape
    if match is None:
        if q > n:
            raise ValueError(f"scores {s.shape}: more queries than gallery items and no `match`")
        match = np.arange(q)
    match = _as_labels("match", match, q).astype(np.int64)
    if np.any(match < 0) or np.any(match >= n):
        raise ValueError(
            f"match: gallery rows must be in [0, {n}), got {match.min()}..{match.max()}"
        )
    true = s[np.arange(q), match][:, None]
    before = np.arange(n)[None, :] < match[:, None]
    return 1 + np.sum(s > true, axis=1) + np.sum((s == true) & before, axis=1)


def instance_retrieval_metrics(
    queries,
    gallery,
    match=None,
    metric: str = "euclidean",
    ks: Sequence[int] = (1, 10),
) -> dict:
    """Fine-grained (instance-level) SBIR metrics: each query has exactly one true match.

    The protocol of QMUL Shoes / Chairs (Yu et al., "Sketch Me That Shoe", CVPR 2016) and
    Sketchy's fine-grained benchmark: every query sketch ranks the whole gallery (all images
    of the split), ``acc@K`` is the fraction of queries whose true match is among the top K,
    and the mean rank is the average 1-based position of the true match (ties: `match_ranks`).

    Args:
      queries: float [Q, D] embeddings or descriptors. gallery: float [N, D].
      match: int [Q] gallery row of each query's match; None = row i for query i.
      metric: "euclidean" or "cosine" (`similarity`).
      ks: the K of the acc@K figures.

    Returns:
      {"acc_at_<K>": float for each K, "mean_rank": float, "median_rank": float,
      "ranks": int64 [Q], "num_queries": Q, "num_gallery": N, "metric": metric}.
    """
    scores = similarity(queries, gallery, metric)
    ranks = match_ranks(scores, match)
    out = {f"acc_at_{int(k)}": float(np.mean(ranks <= int(k))) for k in ks}
    out.update(
        mean_rank=float(np.mean(ranks)),
        median_rank=float(np.median(ranks)),
        ranks=ranks,
        num_queries=int(len(ranks)),
        num_gallery=int(scores.shape[1]),
        metric=metric,
    )
    return out


def random_instance_metrics(num_gallery: int, ks: Sequence[int] = (1, 10)) -> dict:
    """The exact expectation of `instance_retrieval_metrics` under a uniformly random ranking
    of `num_gallery` items: acc@K = min(K, N) / N, mean rank = (N + 1) / 2 (median the same)."""
    n = int(num_gallery)
    if n <= 0:
        raise ValueError(f"num_gallery: expected a positive count, got {num_gallery}")
    out = {f"acc_at_{int(k)}": min(int(k), n) / n for k in ks}
    out.update(mean_rank=(n + 1) / 2.0, median_rank=(n + 1) / 2.0)
    return out
