"""Tests of sketch_tf.eval.retrieval: hand-computed values and scikit-learn parity."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sketch_tf.eval import retrieval as R


def test_average_precision_hand_computed():
    # Ranking: rel, non, rel, non, rel -> AP = (1/1 + 2/3 + 3/5) / 3.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    rel = np.array([1, 0, 1, 0, 1], bool)
    assert R.average_precision(scores, rel) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # Order of the input does not matter, only the scores.
    perm = np.array([4, 2, 0, 3, 1])
    assert R.average_precision(scores[perm], rel[perm]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_average_precision_ties_grouped():
    # Two items tied at the top, one relevant: the group counts as one step with precision 1/2,
    # then a relevant item at rank 3 with precision 2/3. AP = (1/2 * 1/2) + (1/2 * 2/3).
    scores = np.array([1.0, 1.0, 0.5])
    for rel in ([1, 0, 1], [0, 1, 1]):
        assert R.average_precision(scores, np.array(rel, bool)) == pytest.approx(0.25 + 1 / 3)


def test_average_precision_no_relevant_is_zero():
    assert R.average_precision([0.3, 0.2], [False, False]) == 0.0


def test_average_precision_rejects_bad_shapes():
    with pytest.raises(ValueError, match="relevant"):
        R.average_precision([0.1, 0.2], [True])


@pytest.mark.parametrize("seed", range(5))
def test_parity_with_sklearn_random_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(2, 60))
        scores = rng.integers(0, 6, size=n).astype(float) / 5.0  # many ties
        rel = rng.random(n) < 0.3
        if not rel.any():
            rel[rng.integers(n)] = True
        assert R.average_precision(scores, rel) == pytest.approx(
            average_precision_score(rel, scores), abs=1e-12
        )


def _brute_force(scores, rel, k):
    """Straightforward loop versions of P@k, the SAKE mAP@k, and the D2S mAP@k (via sklearn)."""
    order = np.argsort(-scores, kind="stable")
    r = rel[order]
    s = scores[order]
    kk = min(k, len(r))
    p_k = r[:kk].sum() / kk
    hits, precs = 0, []
    for i in range(kk):
        hits += r[i]
        precs.append(hits / (i + 1))
    sake = 0.0
    for i in range(kk):
        if r[i]:
            sake += max(precs[i:])
    denom = min(k, rel.sum())
    sake = sake / denom if denom else 0.0
    if r[:kk].any():
        d2s = average_precision_score(r[:kk], s[:kk])
    else:
        d2s = 0.0
    return p_k, sake, d2s


def test_retrieval_metrics_match_references_with_ties_and_chunks():
    rng = np.random.default_rng(7)
    # Integer-valued embeddings on a coarse grid produce many exact distance ties.
    q = rng.integers(0, 3, size=(23, 4)).astype(np.float32)
    g = rng.integers(0, 3, size=(57, 4)).astype(np.float32)
    ql = rng.integers(0, 4, size=23)
    gl = rng.integers(0, 4, size=57)
    out = R.retrieval_metrics(
        q, ql, g, gl, precision_at=(5, 100), map_at=(10,), max_chunk_bytes=1, return_per_query=True
    )
    scores = R.similarity(q, g)
    ap, p5, p100, sake, d2s = [], [], [], [], []
    for i in range(len(q)):
        rel = gl == ql[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ap.append(average_precision_score(rel, scores[i]) if rel.any() else 0.0)
        p5.append(_brute_force(scores[i], rel, 5)[0])
        p100.append(_brute_force(scores[i], rel, 100)[0])
        _, s10, d10 = _brute_force(scores[i], rel, 10)
        sake.append(s10)
        d2s.append(d10)
    np.testing.assert_allclose(out["per_query"]["map_all"], ap, atol=1e-12)
    np.testing.assert_allclose(out["per_query"]["p_5"], p5)
    np.testing.assert_allclose(out["per_query"]["p_100"], p100)
    np.testing.assert_allclose(out["per_query"]["map_10"], d2s, atol=1e-12)
    np.testing.assert_allclose(out["per_query"]["map_10_sake"], sake, atol=1e-12)
    assert out["map_all"] == pytest.approx(np.mean(ap))
    assert out["num_queries"] == 23 and out["num_gallery"] == 57
    # Per-class entries average the class's queries.
    for label, entry in out["per_class"].items():
        mask = ql == label
        assert entry["num_queries"] == mask.sum()
        assert entry["map_all"] == pytest.approx(np.mean(np.array(ap)[mask]))


def test_retrieval_metrics_hand_example_and_keys():
    # 1-D embeddings; query at 0 of class "a". Gallery distances 1, 2, 3, 4 with classes a, b, a, b.
    q = np.array([[0.0]])
    g = np.array([[1.0], [-2.0], [3.0], [4.0]])
    out = R.retrieval_metrics(q, ["a"], g, ["a", "b", "a", "b"])
    assert out["map_all"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["map_200"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["map_200_sake"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["map_all_sake"] == pytest.approx((1 + 2 / 3) / 2)  # precision never rises here
    assert out["p_100"] == pytest.approx(2 / 4)  # gallery of 4 < k: divide by 4
    assert set(out) >= {"map_all", "map_all_sake", "map_200", "p_100", "p_200", "per_class"}
    assert "map_all_sake" in out["per_class"]["a"]
    assert out["per_class"]["a"]["num_queries"] == 1


def test_self_matches_are_excluded():
    # Photo->photo: the query itself is in the gallery with distance 0.
    emb = np.array([[0.0], [1.0], [5.0], [6.0]])
    labels = np.array([0, 1, 0, 1])
    ids = np.array([10, 11, 12, 13])
    out = R.retrieval_metrics(
        emb, labels, emb, labels, query_ids=ids, gallery_ids=ids, return_per_query=True
    )
    # Query 0 (class 0, at 0): remaining ranking 1(c1), 5(c0), 6(c1) -> AP = 1/2, P@100 = 1/3.
    assert out["per_query"]["map_all"][0] == pytest.approx(0.5)
    assert out["per_query"]["p_100"][0] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="both"):
        R.retrieval_metrics(emb, labels, emb, labels, query_ids=ids)


def test_cosine_metric_and_errors():
    q = np.array([[1.0, 0.0]])
    g = np.array([[10.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    out = R.retrieval_metrics(q, [1], g, [0, 1, 1], metric="cosine")
    # Cosine ranking: g2 (1.0), g0 (0.995), g1 (0.0) -> rel, non, rel.
    assert out["map_all"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="metric"):
        R.retrieval_metrics(q, [1], g, [0, 1, 1], metric="l1")
    with pytest.raises(ValueError, match="gallery_labels"):
        R.retrieval_metrics(q, [1], g, [0, 1])


def test_expected_random_ap_closed_form_small_case():
    # N=3, n=1: AP is 1, 1/2, 1/3 with equal probability.
    assert R.expected_random_ap(1, 3) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # N=3, n=2: orders (r,r,x)=1, (r,x,r)=(1+2/3)/2, (x,r,r)=(1/2+2/3)/2, each with prob 1/3.
    expected = (1 + (1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 3
    assert R.expected_random_ap(2, 3) == pytest.approx(expected)


def test_random_baseline_approaches_expectation():
    gl = np.repeat(np.arange(5), 60)  # 300 photos, 60 per class
    ql = np.repeat(np.arange(5), 3)
    out = R.random_ranking_baseline(ql, gl, seed=0, repeats=200)
    assert out["expected_map_all"] == pytest.approx(R.expected_random_ap(60, 300))
    assert out["map_all"] == pytest.approx(out["expected_map_all"], abs=0.01)
    assert out["p_100"] == pytest.approx(0.2, abs=0.01)
    assert out["expected_p_100"] == pytest.approx(0.2)
    assert 0.0 <= out["map_200"] <= 1.0 and out["num_gallery"] == 300
    # The interpolated (SAKE) AP of a random ranking is clearly above scikit-learn's.
    assert out["map_all_sake"] > out["map_all"] + 0.01


def _voc_ap_reference(scores, rel, top=None):
    """Loop version of SAKE's definition: recall / precision curve, precision envelope, sum of
    the envelope over the recall steps (with end points recall 0 / 1 at precision 0)."""
    order = np.argsort(-scores, kind="stable")
    hit = rel[order].astype(bool)
    n_pos = int(rel.sum())
    if top is not None:
        hit, n_pos = hit[:top], min(top, n_pos)
    tp = np.cumsum(hit)
    fp = np.cumsum(~hit)
    recall = np.concatenate([[0.0], tp / n_pos, [1.0]])
    precision = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    total = 0.0
    for i in range(1, len(recall)):
        if recall[i] != recall[i - 1]:
            total += (recall[i] - recall[i - 1]) * precision[i]
    return total


def test_average_precision_sake_hand_computed():
    # Ranking: rel, non, non, rel, rel. Precision at the ranks: 1, 1/2, 1/3, 2/4, 3/5.
    # scikit-learn: (1 + 2/4 + 3/5) / 3 = 0.7; SAKE interpolates rank 4 up to max(2/4, 3/5):
    # (1 + 3/5 + 3/5) / 3 = 0.7333.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    rel = np.array([1, 0, 0, 1, 1], bool)
    assert R.average_precision(scores, rel) == pytest.approx(0.7)
    assert R.average_precision_sake(scores, rel) == pytest.approx((1 + 0.6 + 0.6) / 3)
    # top=3: only rank 1 is a relevant hit; divided by min(3, 3 relevant) = 3.
    assert R.average_precision_sake(scores, rel, top=3) == pytest.approx(1 / 3)
    # top=2 with 3 relevant items: divided by min(2, 3) = 2.
    assert R.average_precision_sake(scores, rel, top=2) == pytest.approx(1 / 2)
    assert R.average_precision_sake([0.3, 0.2], [False, False]) == 0.0
    q = np.array([[0.0]])
    g = np.array([[0.9], [1.0], [1.1], [1.2], [1.3]])  # distances give the same ranking
    out = R.retrieval_metrics(q, [1], g, [1, 0, 0, 1, 1])
    assert out["map_all"] == pytest.approx(0.7)
    assert out["map_all_sake"] == pytest.approx(2.2 / 3)
    with pytest.raises(ValueError, match="relevant"):
        R.average_precision_sake([0.1, 0.2], [True])


@pytest.mark.parametrize("seed", range(3))
def test_map_all_sake_matches_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(31, 5))
    g = rng.normal(size=(143, 5))
    ql = rng.integers(0, 4, size=31)
    gl = rng.integers(0, 4, size=143)
    out = R.retrieval_metrics(q, ql, g, gl, map_at=(20,), max_chunk_bytes=1, return_per_query=True)
    scores = R.similarity(q, g)
    ref = [_voc_ap_reference(scores[i], gl == ql[i]) for i in range(len(q))]
    ref20 = [_voc_ap_reference(scores[i], gl == ql[i], top=20) for i in range(len(q))]
    np.testing.assert_allclose(out["per_query"]["map_all_sake"], ref, atol=1e-12)
    np.testing.assert_allclose(out["per_query"]["map_20_sake"], ref20, atol=1e-12)
    single = [R.average_precision_sake(scores[i], gl == ql[i]) for i in range(len(q))]
    np.testing.assert_allclose(single, ref, atol=1e-12)
    assert out["map_all_sake"] == pytest.approx(np.mean(ref))
    # Interpolation only raises precision: SAKE's AP >= scikit-learn's for every query.
    assert np.all(out["per_query"]["map_all_sake"] >= out["per_query"]["map_all"] - 1e-12)
    assert out["map_all_sake"] > out["map_all"]


def test_metrics_from_scores_equal_the_embedding_metrics():
    rng = np.random.default_rng(5)
    q, g = rng.normal(size=(7, 4)), rng.normal(size=(30, 4))
    ql, gl = rng.integers(0, 3, 7), rng.integers(0, 3, 30)
    ref = R.retrieval_metrics(q, ql, g, gl, metric="cosine")
    sims = R.similarity(q, g, "cosine")
    rel = ql[:, None] == gl[None]
    got = R.metrics_from_scores(sims, rel, ql, max_chunk_bytes=20 * 8 * 30 * 3)  # 3-row chunks
    for key in ("map_all", "map_all_sake", "p_100", "map_200"):
        assert got[key] == pytest.approx(ref[key])
    # As functions of the row range, with excluded items (they leave the ranking).
    excl = np.zeros_like(rel)
    excl[:, 0] = True
    by_rows = R.metrics_from_scores(lambda a, b: sims[a:b], lambda a, b: rel[a:b], ql,
                                    excluded=lambda a, b: excl[a:b], num_gallery=30)  # fmt: skip
    ref_ex = R.retrieval_metrics(q, ql, g[1:], gl[1:], metric="cosine")
    assert by_rows["map_all"] == pytest.approx(ref_ex["map_all"])
    with pytest.raises(ValueError, match="scores"):
        R.metrics_from_scores(sims[:, :3], rel, ql)
    with pytest.raises(ValueError, match="NaN"):
        R.metrics_from_scores(np.full_like(sims, np.nan), rel, ql)


def test_instance_metrics_hand_computed():
    # 3 sketches, 4 images on a line; sketch i's match is image i (image 3 is a distractor).
    gallery = np.array([[0.0], [1.0], [2.0], [0.9]])
    queries = np.array([[0.1], [0.0], [2.0]])
    # Distances: q0 -> 0.1, 0.9, 1.9, 0.8 -> match (image 0) first: rank 1.
    #            q1 -> 0.0, 1.0, 2.0, 0.9 -> images 0 and 3 before image 1: rank 3.
    #            q2 -> 2.0, 1.0, 0.0, 1.1 -> rank 1.
    res = R.instance_retrieval_metrics(queries, gallery, ks=(1, 2, 10))
    assert res["ranks"].tolist() == [1, 3, 1]
    assert res["acc_at_1"] == pytest.approx(2 / 3)
    assert res["acc_at_2"] == pytest.approx(2 / 3)
    assert res["acc_at_10"] == 1.0
    assert res["mean_rank"] == pytest.approx(5 / 3)
    assert res["num_gallery"] == 4
    # An explicit match: sketch 1 drawn from image 3 (distance 0.9, after image 0 only).
    res = R.instance_retrieval_metrics(queries, gallery, match=[0, 3, 2])
    assert res["ranks"].tolist() == [1, 2, 1]


def test_instance_ranks_break_ties_against_the_match():
    scores = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    # Tied items before the match in gallery order rank ahead of it: never flattering.
    assert R.match_ranks(scores).tolist() == [1, 2]
    assert R.match_ranks(scores, match=[2, 0]).tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"match: gallery rows must be in \[0, 3\)"):
        R.match_ranks(scores, match=[0, 3])
    rnd = R.random_instance_metrics(50, ks=(1, 10))
    assert rnd == {"acc_at_1": 0.02, "acc_at_10": 0.2, "mean_rank": 25.5, "median_rank": 25.5}


def test_unit_rows_keeps_zero_rows_and_dtype():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    got = R.unit_rows(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0]])
