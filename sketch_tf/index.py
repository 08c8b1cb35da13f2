"""Gallery index for retrieval: exact chunked NumPy search or a faiss index.

Both backends return *scores* where higher means more similar, so results are interchangeable:

* ``metric="euclidean"``: score = minus the (non-squared) L2 distance. faiss ``IndexFlatL2`` /
  ``IndexIVFFlat`` return squared distances; they are converted.
* ``metric="cosine"``: vectors are L2-normalised when added and queried, score = inner product
  (faiss ``IndexFlatIP`` / IVF with ``METRIC_INNER_PRODUCT``).
* ``metric="inner_product"``: score = inner product of the vectors as given (e.g. style
  retrieval's weighted sum of two cosines, `sketch_tf.families.style_sbir.serving`).

``backend="exact"`` keeps the float32 embeddings in memory and searches with `exact_top_k`: a
TensorFlow graph (the same op runs inside exported retrieval signatures) that scores the
queries against ``chunk_size`` gallery rows at a time with one matmul and keeps a running
top-k, ties broken by ascending gallery index.
``backend="faiss"`` uses a flat (exact) faiss index, an IVF index when ``nlist`` is given
(approximate; ``nprobe`` lists are visited per query; it is trained on the first ``add`` call, which
must then hold at least ``nlist`` vectors), or any faiss index factory string (``factory=
"IVF4096,PQ32"``, ``"HNSW32"``: compressed / graph indexes for millions of images; trained on
the first ``add`` when the kind needs training). faiss is imported only when that backend is used;
install it with the ``faiss`` extra (``pip install 'sketch_tf[faiss]'``, i.e. ``faiss-cpu``).

An index saves to and loads from a folder: ``index.json`` (settings), ``labels.npy``, ``ids.npy``
and ``embeddings.npy`` (exact) or ``index.faiss`` (faiss), and ``manifest.json`` (the
``manifest`` attribute: what built the embeddings, e.g. `sketch_tf.train.run.Run.manifest`);
``load(folder, expect_manifest=...)`` refuses an index whose manifest differs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

_METRICS = ("euclidean", "cosine", "inner_product")
_BACKENDS = ("exact", "faiss")


def _import_faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "GalleryIndex(backend='faiss') needs the faiss package: install the 'faiss' extra "
            "(pip install 'sketch_tf[faiss]', which pulls faiss-cpu)"
        ) from err
    return faiss


def _normalise(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what}: cosine metric needs non-zero vectors, found a zero vector")
    return (x / norms).astype(np.float32)


#: Gallery rows per matmul block of `exact_top_k` (a [Q, chunk] float32 block of scores).
DEFAULT_GALLERY_CHUNK = 32768
#: Scores per group of the two-stage selection inside a block (see `exact_top_k`).
_GROUP = 64


#: Columns of the search matrix are padded to a multiple of this: rows of a multiple of 64
#: bytes let TF slice the gallery blocks as views (an unaligned row size makes every block a
#: copy: +95 ms per query over 1M x 257 rows, retrieval_bench).
_ROW_ALIGN = 16


class SearchMatrix(NamedTuple):
    """The gallery as `exact_top_k` scores it (`search_matrix`).

    rows: float32 [N, M], 2 g for the euclidean metric (so that q.(2 g) - |g|^2 is the
      per-query order of -|q - g|), g for cosine / inner product, zero-padded to M = a
      multiple of 16 columns (aligned rows).
    bias: float32 [N], -|g|^2 for the euclidean metric (added to each block of scores inside
      the matmul: a fused bias add), None for cosine / inner product.
    """

    rows: Any
    bias: Any = None


def search_matrix(gallery, metric: str = "euclidean") -> SearchMatrix:
    """The gallery as `exact_top_k` multiplies it (`SearchMatrix`). Compute it once per
    gallery and pass it to `exact_top_k` to skip the per-call copy.

    The squared norms are a separate bias rather than an extra column of the matrix: a
    256-d gallery stays a 256-column matmul (not 257 padded to 272, 6 % more FLOPs)."""
    import tensorflow as tf  # noqa: PLC0415 - the index's numpy-only users skip the import

    g = tf.convert_to_tensor(gallery, tf.float32)
    bias = -tf.reduce_sum(g * g, 1) if metric == "euclidean" else None
    rows = 2.0 * g if metric == "euclidean" else g
    pad = -rows.shape[1] % _ROW_ALIGN
    return SearchMatrix(tf.pad(rows, [[0, 0], [0, pad]]) if pad else rows, bias)


def exact_top_k(
    queries, gallery, k: int, metric: str = "euclidean", gallery_chunk=None, matrix=None
):
    """Exact k-nearest-neighbour search as one TensorFlow graph (eager or inside tf.function).

    The gallery is scored `gallery_chunk` rows at a time with one matmul per block (against
    `search_matrix`) and a running top-k is merged after each block, so memory is
    O(Q x gallery_chunk) whatever the gallery size. Inside a block the top k come from a
    two-stage selection: the maximum of every group of 64 consecutive scores, the k best
    groups, then the top k of their 64 k scores (the k best items always lie in the k groups
    with the highest maxima); ~5x less selection time than one `top_k` over the block. The
    k kept items are rescored pair by pair (exact distances; identical rows tie exactly).

    Args:
      queries: float32 [Q, D].
      gallery: float32 [N, D], N >= k (for ``metric="cosine"`` both already L2-normalised);
        unused (may be None) when `matrix` is given.
      k: neighbours wanted, 1 <= k <= N: a Python int, or inside a tf.function a scalar int32
        tensor (a request's k in a serving signature).
      metric: ``"euclidean"`` (score = minus the L2 distance), ``"cosine"`` or
        ``"inner_product"`` (score = inner product).
      gallery_chunk: gallery rows per block (default `DEFAULT_GALLERY_CHUNK`).
      matrix: optional `search_matrix(gallery, metric)` (a `SearchMatrix`), precomputed (the
        only copy of the gallery the search reads).

    Returns:
      (scores float32 [Q, k], indices int32 [Q, k]): best first, equal scores in ascending
      gallery order (the order of `numpy.lexsort` on (index, -score)).
    """
    import tensorflow as tf  # noqa: PLC0415

    if metric not in _METRICS:
        raise ValueError(f"exact_top_k metric: expected one of {_METRICS}, got {metric!r}")
    chunk = int(gallery_chunk or DEFAULT_GALLERY_CHUNK)
    if isinstance(k, (int, np.integer)):
        k = int(k)
        if k < 1:
            raise ValueError(f"exact_top_k: need k >= 1, got {k}")
    elif tf.executing_eagerly():
        k = int(k)
    if chunk < 1:
        raise ValueError(f"exact_top_k: need gallery_chunk >= 1, got {chunk}")
    q = tf.convert_to_tensor(queries, tf.float32)
    if matrix is None:
        matrix = search_matrix(gallery, metric)
    m = tf.convert_to_tensor(matrix.rows, tf.float32)
    bias = None if metric != "euclidean" else tf.convert_to_tensor(matrix.bias, tf.float32)
    if tf.executing_eagerly():
        return _exact_top_k_fn()(q, m, bias, k=k, metric=metric, chunk=chunk)
    return _exact_top_k_graph(q, m, bias, k, metric, chunk)


def _two_stage_top_k(s, k):
    """Top k of each row of s [Q, C] through the per-group maxima (see `exact_top_k`)."""
    import tensorflow as tf  # noqa: PLC0415

    nq = tf.shape(s)[0]
    pad = -tf.shape(s)[1] % _GROUP  # a short last block: -inf never beats a real score
    groups = tf.reshape(
        tf.pad(s, [[0, 0], [0, pad]], constant_values=float("-inf")), [nq, -1, _GROUP]
    )
    _, best_groups = tf.math.top_k(tf.reduce_max(groups, -1), tf.minimum(k, tf.shape(groups)[1]))
    # Ascending group order, so that equal scores keep the lower position first.
    best_groups = tf.sort(best_groups, 1)
    cand = tf.reshape(tf.gather(groups, best_groups, batch_dims=1), [nq, -1])
    top_s, pos = tf.math.top_k(cand, tf.minimum(k, tf.shape(s)[1]))
    group = tf.gather(best_groups, pos // _GROUP, batch_dims=1)
    return top_s, group * _GROUP + pos % _GROUP


def _block_top_k(s, k, chunk: int):
    """Top min(k, C) of each row of one block s [Q, C] -> (scores, positions in the block);
    `k` a Python int or a scalar int32 tensor."""
    import tensorflow as tf  # noqa: PLC0415

    def plain():
        return tuple(tf.math.top_k(s, tf.minimum(k, tf.shape(s)[1])))

    if isinstance(k, int):  # few groups per block: the plain selection is as cheap
        return plain() if k * _GROUP >= chunk else _two_stage_top_k(s, k)
    return tf.cond(k * _GROUP >= chunk, plain, lambda: _two_stage_top_k(s, k))


def _exact_top_k_graph(q, m, bias, k, metric, chunk):
    import tensorflow as tf  # noqa: PLC0415

    n = tf.shape(m)[0]
    nq = tf.shape(q)[0]
    dim = tf.shape(q)[1]
    tf.debugging.assert_greater_equal(n, k, message="exact_top_k: k exceeds the gallery size")
    q_pad = tf.pad(q, [[0, 0], [0, tf.shape(m)[1] - dim]])  # m's padding
    num_chunks = (n + chunk - 1) // chunk

    def body(i, best_s, best_i):
        start = i * chunk
        s = tf.matmul(q_pad, m[start : start + chunk], transpose_b=True)  # [Q, <= chunk]
        if bias is not None:  # BiasAdd after MatMul: fused into the matmul on CPU
            s = tf.nn.bias_add(s, bias[start : start + chunk])
        top_s, top_i = _block_top_k(s, k, chunk)
        # Earlier blocks first: top_k keeps the lower position first among equal scores,
        # which is the lower gallery index.
        cand_s = tf.concat([best_s, top_s], 1)
        cand_i = tf.concat([best_i, top_i + start], 1)
        keep_s, pos = tf.math.top_k(cand_s, tf.minimum(k, tf.shape(cand_s)[1]))
        return i + 1, keep_s, tf.gather(cand_i, pos, batch_dims=1)

    _, best_s, best_i = tf.while_loop(
        lambda i, *_: i < num_chunks,
        body,
        (tf.constant(0), tf.zeros([nq, 0]), tf.zeros([nq, 0], tf.int32)),
        shape_invariants=(
            tf.TensorShape([]), tf.TensorShape([None, None]), tf.TensorShape([None, None])
        ),
    )  # fmt: skip
    # Rescore the k kept items pair by pair: the blocked matmul rounds an item's score
    # differently by where it sits in its block, so identical gallery rows could otherwise
    # tie-break out of gallery order; the direct form also avoids the cancellation of
    # |q|^2 - 2 q.g + |g|^2. Candidates in ascending index, then a stable top-k. The gallery
    # rows come back from the search matrix (2 g halved: exact in float32).
    best_i = tf.sort(best_i, axis=1)
    kept = tf.gather(m, best_i)[:, :, :dim]  # [Q, k, D]
    if metric == "euclidean":
        kept = 0.5 * kept
        rescored = -tf.sqrt(tf.reduce_sum(tf.square(q[:, None, :] - kept), -1))
    else:
        rescored = tf.reduce_sum(q[:, None, :] * kept, -1)
    best_s, pos = tf.math.top_k(rescored, k)
    return best_s, tf.gather(best_i, pos, batch_dims=1)


@functools.cache
def _exact_top_k_fn():
    """`_exact_top_k_graph` as one tf.function (built on first use: the index's numpy-only
    users never import TF); one trace per (k, metric, chunk), eager callers get a graph
    instead of op-by-op execution of the while loop."""
    import tensorflow as tf  # noqa: PLC0415

    return tf.function(_exact_top_k_graph, reduce_retracing=True)


class GalleryIndex:
    """Nearest-neighbour index over gallery embeddings with labels and ids.

    Args:
      dim: embedding size D.
      metric: ``"euclidean"``, ``"cosine"`` or ``"inner_product"``.
      backend: ``"exact"`` (TensorFlow `exact_top_k`) or ``"faiss"``.
      nlist: faiss only; when set, an IVF index with this many lists (approximate search).
      nprobe: faiss IVF only; lists visited per query.
      chunk_size: exact only; gallery rows scored at once (None: `exact_top_k`'s default).
      factory: faiss only, instead of `nlist`: a faiss index factory string ("Flat",
        "IVF1024,Flat", "IVF4096,PQ32", "HNSW32", ...).
      manifest: JSON-able description of the model that made the embeddings, saved with the
        index and checked by `load(..., expect_manifest=...)`.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "euclidean",
        backend: str = "exact",
        nlist: int | None = None,
        nprobe: int = 8,
        chunk_size: int | None = None,
        factory: str | None = None,
        manifest: dict | None = None,
    ):
        if metric not in _METRICS:
            raise ValueError(f"GalleryIndex metric: expected one of {_METRICS}, got {metric!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"GalleryIndex backend: expected one of {_BACKENDS}, got {backend!r}")
        if int(dim) <= 0:
            raise ValueError(f"GalleryIndex dim: expected a positive size, got {dim}")
        if (nlist is not None or factory is not None) and backend != "faiss":
            raise ValueError("GalleryIndex nlist / factory: need backend='faiss'")
        if nlist is not None and factory is not None:
            raise ValueError("GalleryIndex: give nlist or factory, not both")
        self.dim = int(dim)
        self.metric = metric
        self.backend = backend
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = int(nprobe)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.factory = factory
        self.manifest = dict(manifest or {})
        self._labels: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._emb: list[np.ndarray] = []
        self._faiss_index = None
        self._matrix = None  # exact: `search_matrix` of the gallery, built on first search
        if backend == "faiss":
            self._faiss_index = self._new_faiss_index()

    # -- construction -------------------------------------------------------------------------

    def _new_faiss_index(self):
        faiss = _import_faiss()
        ip = self.metric != "euclidean"
        if self.factory is not None:
            kind = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
            try:
                index = faiss.index_factory(self.dim, self.factory, kind)
            except RuntimeError as err:
                raise ValueError(f"GalleryIndex factory {self.factory!r}: {err}") from err
            self._set_nprobe(index)
            return index
        if self.nlist is None:
            return faiss.IndexFlatIP(self.dim) if ip else faiss.IndexFlatL2(self.dim)
        quantizer = faiss.IndexFlatIP(self.dim) if ip else faiss.IndexFlatL2(self.dim)
        kind = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, kind)
        index.nprobe = self.nprobe
        # Keep the quantizer alive as long as the IVF index (faiss holds a raw pointer).
        self._faiss_quantizer = quantizer
        return index

    def _set_nprobe(self, index) -> None:
        faiss = _import_faiss()
        try:
            faiss.extract_index_ivf(index).nprobe = self.nprobe
        except RuntimeError:
            pass  # not an IVF index: nothing to probe

    def _prepare(self, x, what: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"{what}: expected shape [count, {self.dim}], got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what}: contains NaN or infinite values")
        if self.metric == "cosine":
            arr = _normalise(arr, what)
        return np.ascontiguousarray(arr)

    def add(self, embeddings, labels=None, ids=None) -> None:
        """Adds gallery items.

        Args:
          embeddings: float [N, D].
          labels: optional [N] class labels (kept to read back with ``labels``); default -1.
          ids: optional [N] item ids; default the running position in the index.
        """
        emb = self._prepare(embeddings, "GalleryIndex.add embeddings")
        n = emb.shape[0]
        start = len(self)
        lab = np.full(n, -1) if labels is None else np.asarray(labels)
        idx = np.arange(start, start + n) if ids is None else np.asarray(ids)
        for name, arr in (("labels", lab), ("ids", idx)):
            if arr.shape != (n,):
                raise ValueError(f"GalleryIndex.add {name}: expected shape ({n},), got {arr.shape}")
        if self.backend == "faiss":
            if not self._faiss_index.is_trained:
                if n < (self.nlist or 0):
                    raise ValueError(
                        f"GalleryIndex.add: the IVF index is trained on the first add, which needs "
                        f">= nlist={self.nlist} vectors, got {n}"
                    )
                try:
                    self._faiss_index.train(emb)
                except RuntimeError as err:
                    raise ValueError(
                        f"GalleryIndex.add: training faiss index {self.factory!r} on {n} "
                        f"vectors failed: {err}"
                    ) from err
            self._faiss_index.add(emb)
        else:
            self._emb.append(emb)
            self._matrix = None
        self._labels.append(lab)
        self._ids.append(idx)

    # -- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(sum(len(x) for x in self._labels))

    @property
    def labels(self) -> np.ndarray:
        """[N] labels of the gallery items, in insertion order."""
        return np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=np.int64)

    @property
    def ids(self) -> np.ndarray:
        """[N] ids of the gallery items, in insertion order."""
        return np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int64)

    def _exact_embeddings(self) -> np.ndarray:
        if len(self._emb) > 1:
            self._emb = [np.concatenate(self._emb)]
        return self._emb[0]

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar gallery items of each query.

        Args:
          queries: float [Q, D].
          k: neighbours wanted; capped at the gallery size.

        Returns:
          (scores float32 [Q, k'], indices int64 [Q, k']) with k' = min(k, N), best first;
          indices are positions in insertion order (map them with ``labels`` / ``ids``). An IVF
          search that finds fewer than k' items in its probed lists pads with index -1 and
          score -inf.
        """
        if len(self) == 0:
            raise ValueError("GalleryIndex.search: the index is empty, add embeddings first")
        if int(k) <= 0:
            raise ValueError(f"GalleryIndex.search k: expected a positive count, got {k}")
        q = self._prepare(queries, "GalleryIndex.search queries")
        k = min(int(k), len(self))
        if self.backend == "faiss":
            scores, idx = self._faiss_index.search(q, k)
            scores = scores.astype(np.float32)
            if self.metric == "euclidean":
                scores = -np.sqrt(np.maximum(scores, 0.0))
            scores[idx < 0] = -np.inf
            return scores, idx.astype(np.int64)
        g = self._exact_embeddings()
        if self._matrix is None:
            self._matrix = search_matrix(g, self.metric)
        scores, idx = exact_top_k(
            q, g, k, self.metric, gallery_chunk=self.chunk_size, matrix=self._matrix
        )
        return scores.numpy(), idx.numpy().astype(np.int64)

    # -- persistence --------------------------------------------------------------------------

    def save(self, folder) -> Path:
        """Writes the index into ``folder`` (created if needed); returns the folder path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        settings = {
            "dim": self.dim,
            "metric": self.metric,
            "backend": self.backend,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "chunk_size": self.chunk_size,
            "factory": self.factory,
            "size": len(self),
        }
        (folder / "index.json").write_text(json.dumps(settings, indent=2))
        (folder / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
        np.save(folder / "labels.npy", self.labels, allow_pickle=False)
        np.save(folder / "ids.npy", self.ids, allow_pickle=False)
        if self.backend == "faiss":
            _import_faiss().write_index(self._faiss_index, str(folder / "index.faiss"))
        else:
            emb = self._exact_embeddings() if self._emb else np.zeros((0, self.dim), np.float32)
            np.save(folder / "embeddings.npy", emb, allow_pickle=False)
        return folder

    @classmethod
    def load(cls, folder, expect_manifest: dict | None = None) -> GalleryIndex:
        """Reads an index written by :meth:`save`.

        Args:
          expect_manifest: when given, every key of it must equal the stored manifest's
            (e.g. the loading model's `Run.manifest()`), else ValueError naming the keys: an
            index of another model's embeddings would give meaningless neighbours.
        """
        folder = Path(folder)
        settings_path = folder / "index.json"
        if not settings_path.is_file():
            raise FileNotFoundError(f"{settings_path}: not a GalleryIndex folder (no index.json)")
        s = json.loads(settings_path.read_text())
        manifest_path = folder / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if expect_manifest is not None:
            wrong = sorted(k for k, v in expect_manifest.items() if manifest.get(k) != v)
            if wrong:
                detail = ", ".join(
                    f"{k}: index {manifest.get(k)!r} vs model {expect_manifest[k]!r}" for k in wrong
                )
                raise ValueError(f"{folder}: built by another model ({detail})")
        index = cls.__new__(cls)
        index.dim, index.metric, index.backend = int(s["dim"]), s["metric"], s["backend"]
        index.nlist = s["nlist"]
        index.nprobe, index.chunk_size = int(s["nprobe"]), s["chunk_size"]
        index.factory, index.manifest = s.get("factory"), manifest
        index._labels = [np.load(folder / "labels.npy", allow_pickle=False)]
        index._ids = [np.load(folder / "ids.npy", allow_pickle=False)]
        index._emb, index._faiss_index, index._matrix = [], None, None
        if index.backend == "faiss":
            faiss = _import_faiss()
            index._faiss_index = faiss.read_index(str(folder / "index.faiss"))
            index._set_nprobe(index._faiss_index)
            stored = index._faiss_index.ntotal
        else:
            index._emb = [np.load(folder / "embeddings.npy", allow_pickle=False)]
            stored = len(index._emb[0])
        if stored != len(index) or len(index) != s["size"]:
            raise ValueError(
                f"{folder}: index holds {stored} vectors and {len(index)} labels, "
                f"index.json says {s['size']}"
            )
        return index
