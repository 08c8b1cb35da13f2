"""Tests of sketch_tf.index.GalleryIndex: exact vs faiss agreement, ties, save/load."""

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.eval.retrieval import similarity
from sketch_tf.index import GalleryIndex, exact_top_k

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    labels = rng.integers(0, 5, size=500)
    return gallery, queries, labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_matches_brute_force(data, metric):
    gallery, queries, labels = data
    index = GalleryIndex(16, metric=metric, chunk_size=10)
    index.add(gallery[:200], labels[:200])
    index.add(gallery[200:], labels[200:])
    scores, idx = index.search(queries, 7)
    ref = similarity(queries, gallery, metric)
    ref_idx = np.argsort(-ref, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_idx, axis=1), atol=1e-4)
    np.testing.assert_array_equal(index.labels, labels)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_flat_agrees_with_exact(data, metric):
    gallery, queries, labels = data
    exact = GalleryIndex(16, metric=metric)
    flat = GalleryIndex(16, metric=metric, backend="faiss")
    for index in (exact, flat):
        index.add(gallery, labels)
    s_e, i_e = exact.search(queries, 10)
    s_f, i_f = flat.search(queries, 10)
    np.testing.assert_array_equal(i_e, i_f)
    np.testing.assert_allclose(s_e, s_f, atol=1e-4)


def test_faiss_ivf_with_all_lists_probed_is_exact(data):
    gallery, queries, labels = data
    exact = GalleryIndex(16)
    exact.add(gallery, labels)
    ivf = GalleryIndex(16, backend="faiss", nlist=8, nprobe=8)
    ivf.add(gallery, labels)
    np.testing.assert_array_equal(exact.search(queries, 5)[1], ivf.search(queries, 5)[1])


@pytest.mark.parametrize("chunk", [3, 7, 64, None])
def test_exact_top_k_blocks_agree_with_brute_force(data, chunk):
    # Blocks smaller than k, equal to k, an uneven last block, and one block.
    gallery, queries, _ = data
    scores, idx = exact_top_k(queries, gallery[:100], 7, "euclidean", gallery_chunk=chunk)
    ref = similarity(queries, gallery[:100], "euclidean")
    ref_idx = np.argsort(-ref, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(ref, ref_idx, 1), atol=1e-4)
    # Identical rows in different blocks score identically and keep gallery order.
    tied = np.concatenate([gallery[:50], gallery[:50]])
    scores, idx = exact_top_k(queries, tied, 6, "euclidean", gallery_chunk=chunk)
    idx, scores = idx.numpy(), scores.numpy()
    for row_i, row_s in zip(idx, scores, strict=True):
        for a in range(5):
            if row_i[a] + 50 == row_i[a + 1]:
                assert row_s[a] == row_s[a + 1]
    np.testing.assert_array_equal(idx[:, 1], idx[:, 0] + 50)  # the nearest row, twice


def test_exact_top_k_two_stage_selection_over_blocks():
    # k * 64 < gallery_chunk: blocks go through the group-maximum selection, the last block
    # is short and not a multiple of the group size.
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(3001, 8)).astype(np.float32)
    queries = rng.normal(size=(9, 8)).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        scores, idx = exact_top_k(queries, gallery, 7, metric, gallery_chunk=1000)
        ref = queries @ gallery.T if metric == "cosine" else similarity(queries, gallery)
        ref_idx = np.argsort(-ref, axis=1, kind="stable")[:, :7]
        np.testing.assert_array_equal(idx.numpy(), ref_idx)
        np.testing.assert_allclose(scores.numpy(), np.take_along_axis(ref, ref_idx, 1), atol=1e-4)


def test_exact_top_k_inside_a_graph(data):
    gallery, queries, _ = data
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)  # cosine: unit rows
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    fn = tf.function(lambda q: exact_top_k(q, gallery, 5, "cosine", gallery_chunk=100))
    scores, idx = fn(tf.constant(queries))
    ref = similarity(queries, gallery, "cosine")
    np.testing.assert_array_equal(idx.numpy(), np.argsort(-ref, axis=1, kind="stable")[:, :5])
    with pytest.raises(ValueError, match="metric"):
        exact_top_k(queries, gallery, 5, "manhattan")


def test_exact_ties_in_gallery_order():
    index = GalleryIndex(2)
    index.add(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]))
    scores, idx = index.search(np.array([[1.0, 0.0]]), 3)
    np.testing.assert_array_equal(idx[0], [0, 2, 1])
    np.testing.assert_allclose(scores[0], [0.0, 0.0, -np.sqrt(2.0)], atol=1e-6)


def test_k_capped_at_gallery_size(data):
    gallery, queries, _ = data
    index = GalleryIndex(16, backend="faiss")
    index.add(gallery[:3])
    scores, idx = index.search(queries[:2], 10)
    assert scores.shape == (2, 3) and sorted(idx[0]) == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs", [dict(backend="exact"), dict(backend="faiss"), dict(backend="faiss", nlist=4)]
)
def test_save_load_roundtrip(tmp_path, data, kwargs):
    gallery, queries, labels = data
    index = GalleryIndex(16, metric="cosine", **kwargs)
    index.add(gallery, labels, ids=np.arange(500) + 1000)
    before = index.search(queries, 4)
    loaded = GalleryIndex.load(index.save(tmp_path / "idx"))
    after = loaded.search(queries, 4)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])
    np.testing.assert_array_equal(loaded.ids, np.arange(500) + 1000)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.metric == "cosine" and len(loaded) == 500


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        GalleryIndex(4, metric="l1")
    with pytest.raises(ValueError, match="nlist"):
        GalleryIndex(4, nlist=3)
    index = GalleryIndex(4)
    with pytest.raises(ValueError, match="empty"):
        index.search(np.zeros((1, 4)), 1)
    with pytest.raises(ValueError, match=r"\[count, 4\]"):
        index.add(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="nlist=8"):
        GalleryIndex(4, backend="faiss", nlist=8).add(np.ones((3, 4)))
    with pytest.raises(FileNotFoundError, match="index.json"):
        GalleryIndex.load(tmp_path)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16"])
def test_faiss_factory_indexes_find_the_exact_neighbours(tmp_path, data, factory):
    gallery, queries, labels = data
    exact = GalleryIndex(16, metric="cosine")
    exact.add(gallery, labels)
    approx = GalleryIndex(16, metric="cosine", backend="faiss", factory=factory, nprobe=8)
    approx.add(gallery, labels)  # IVF: trained on this first add
    want, got = exact.search(queries, 5)[1], approx.search(queries, 5)[1]
    # Every list probed (IVF) / a small graph (HNSW): the same neighbours as exact search.
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(want, got, strict=True)])
    assert recall >= 0.95, recall
    loaded = GalleryIndex.load(approx.save(tmp_path / "f"))
    assert loaded.factory == factory
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], got)
    with pytest.raises(ValueError, match="factory 'IVF8,Nope'"):
        GalleryIndex(16, backend="faiss", factory="IVF8,Nope")


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_inner_product_scores_are_the_plain_dot_product(data, backend):
    gallery, queries, _ = data
    index = GalleryIndex(16, metric="inner_product", backend=backend)
    index.add(2.0 * gallery)  # not normalised: the scale shows in the scores
    scores, idx = index.search(queries, 3)
    dots = queries @ (2.0 * gallery).T
    np.testing.assert_array_equal(idx, np.argsort(-dots, 1, kind="stable")[:, :3])
    np.testing.assert_allclose(scores, np.take_along_axis(dots, idx, 1), rtol=1e-5)


def test_manifest_is_saved_and_a_mismatch_refused(tmp_path, data):
    gallery, _, labels = data
    model = {"task": "zs_sbir", "checkpoint": "/runs/a/ckpt-5", "step": 5}
    index = GalleryIndex(16, manifest=model)
    index.add(gallery, labels, ids=np.array([f"img/{i}.png" for i in range(500)]))
    folder = index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(folder, expect_manifest=model)
    assert loaded.manifest == model and loaded.ids[3] == "img/3.png"
    with pytest.raises(ValueError, match="another model .*step: index 5 vs model 7"):
        GalleryIndex.load(folder, expect_manifest={**model, "step": 7})


def test_exact_top_k_with_a_tensor_k_inside_a_graph(data):
    # A serving request's k is a tensor: both selection paths (plain top-k when k * 64 covers
    # the block, group maxima otherwise) must give the Python-int results.
    gallery, queries, _ = data
    fn = tf.function(
        lambda q, k: exact_top_k(q, gallery, k, "euclidean", gallery_chunk=256),
        input_signature=[tf.TensorSpec([None, 16]), tf.TensorSpec([], tf.int32)],
    )
    for k in (2, 7):  # 2 * 64 < 256: two-stage; 7 * 64 >= 256: plain
        got_s, got_i = fn(queries, tf.constant(k))
        want_s, want_i = exact_top_k(queries, gallery, k, "euclidean", gallery_chunk=256)
        np.testing.assert_array_equal(got_i.numpy(), want_i.numpy())
        np.testing.assert_allclose(got_s.numpy(), want_s.numpy())


def _numpy_top_k(queries, gallery, k, metric):
    """The plain reference: float64 scores, best first, equal scores in ascending index."""
    q, g = queries.astype(np.float64), gallery.astype(np.float64)
    if metric == "euclidean":
        scores = -np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    else:
        scores = q @ g.T
    order = np.stack([np.lexsort((np.arange(len(g)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("dim", [19, 32])  # padded to 32 columns, and already aligned
@pytest.mark.parametrize("chunk", [None, 100, 1000])  # one block, plain and two-stage blocks
@pytest.mark.parametrize("metric", ["euclidean", "inner_product"])
def test_exact_top_k_equals_a_numpy_reference_with_ties(dim, chunk, metric):
    # Entries in {-1, 0, 1}: every score is exact in float32 and many distinct rows score the
    # same, so the k-th place falls inside a group of equal scores; some rows are repeated.
    rng = np.random.default_rng(dim)
    gallery = rng.integers(-1, 2, size=(3001, dim)).astype(np.float32)
    gallery[2000:2100] = gallery[:100]
    queries = rng.integers(-1, 2, size=(23, dim)).astype(np.float32)
    queries[:3] = gallery[[5, 2050, 3000]]
    want_s, want_i = _numpy_top_k(queries, gallery, 10, metric)
    assert (want_s[:, -1] == want_s[:, -2]).any()  # the data does tie at the cut
    scores, idx = exact_top_k(queries, gallery, 10, metric, gallery_chunk=chunk)
    np.testing.assert_array_equal(idx.numpy(), want_i)
    np.testing.assert_allclose(scores.numpy(), want_s, atol=1e-5)
    index = GalleryIndex(dim, metric=metric, chunk_size=chunk)
    index.add(gallery)
    np.testing.assert_array_equal(index.search(queries, 10)[1], want_i)
