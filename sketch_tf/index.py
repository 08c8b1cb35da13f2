"""Gallery index for retrieval: exact chunked NumPy search or a faiss index.

Both backends return *scores* where higher means more similar, so results are interchangeable:

* ``metric="euclidean"``: score = minus the (non-squared) L2 distance. faiss ``IndexFlatL2`` /
  ``IndexIVFFlat`` return squared distances; they are converted.
* ``metric="cosine"``: vectors are L2-normalised when added and queried, score = inner product
  (faiss ``IndexFlatIP`` / IVF with ``METRIC_INNER_PRODUCT``).

``backend="exact"`` keeps the float32 embeddings in memory and scores queries in chunks of
``chunk_size`` rows (a ``[chunk, N]`` block at a time), ties broken by ascending gallery index.
``backend="faiss"`` uses a flat (exact) faiss index, or an IVF index when ``nlist`` is given
(approximate; ``nprobe`` lists are visited per query; it is trained on the first ``add`` call, which
must then hold at least ``nlist`` vectors). faiss is imported only when that backend is used;
install it with the ``faiss`` extra (``pip install 'sketch_tf[faiss]'``, i.e. ``faiss-cpu``).

An index saves to and loads from a folder: ``index.json`` (settings), ``labels.npy``, ``ids.npy``
and ``embeddings.npy`` (exact) or ``index.faiss`` (faiss).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_METRICS = ("euclidean", "cosine")
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


class GalleryIndex:
    """Nearest-neighbour index over gallery embeddings with labels and ids.

    Args:
      dim: embedding size D.
      metric: ``"euclidean"`` or ``"cosine"``.
      backend: ``"exact"`` (NumPy) or ``"faiss"``.
      nlist: faiss only; when set, an IVF index with this many lists (approximate search).
      nprobe: faiss IVF only; lists visited per query.
      chunk_size: exact only; query rows scored at once (None: as many as fit in about
        256 MB of temporaries, i.e. ``256 MB / (16 bytes x N)``).
    """

    def __init__(
        self,
        dim: int,
        metric: str = "euclidean",
        backend: str = "exact",
        nlist: int | None = None,
        nprobe: int = 8,
        chunk_size: int | None = None,
    ):
        if metric not in _METRICS:
            raise ValueError(f"GalleryIndex metric: expected one of {_METRICS}, got {metric!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"GalleryIndex backend: expected one of {_BACKENDS}, got {backend!r}")
        if int(dim) <= 0:
            raise ValueError(f"GalleryIndex dim: expected a positive size, got {dim}")
        if nlist is not None and backend != "faiss":
            raise ValueError("GalleryIndex nlist: IVF search needs backend='faiss'")
        self.dim = int(dim)
        self.metric = metric
        self.backend = backend
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = int(nprobe)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self._labels: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._emb: list[np.ndarray] = []
        self._faiss_index = None
        if backend == "faiss":
            self._faiss_index = self._new_faiss_index()

    # -- construction -------------------------------------------------------------------------

    def _new_faiss_index(self):
        faiss = _import_faiss()
        ip = self.metric == "cosine"
        if self.nlist is None:
            return faiss.IndexFlatIP(self.dim) if ip else faiss.IndexFlatL2(self.dim)
        quantizer = faiss.IndexFlatIP(self.dim) if ip else faiss.IndexFlatL2(self.dim)
        kind = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, kind)
        index.nprobe = self.nprobe
        # Keep the quantizer alive as long as the IVF index (faiss holds a raw pointer).
        self._faiss_quantizer = quantizer
        return index

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
                self._faiss_index.train(emb)
            self._faiss_index.add(emb)
        else:
            self._emb.append(emb)
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
        g_sq = (g * g).sum(axis=1)
        all_s, all_i = [], []
        rows = self.chunk_size or max(1, (256 * 2**20) // (16 * len(g)))
        for start in range(0, q.shape[0], rows):
            qc = q[start : start + rows]
            s = qc @ g.T
            if self.metric == "euclidean":
                s = -np.sqrt(np.maximum((qc * qc).sum(1)[:, None] + g_sq[None, :] - 2.0 * s, 0.0))
            if k < s.shape[1]:
                part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(s.shape[1]), s.shape)
            ps = np.take_along_axis(s, part, axis=1)
            # Best first; equal scores in ascending gallery order.
            order = np.lexsort((part, -ps), axis=1)
            all_i.append(np.take_along_axis(part, order, axis=1))
            all_s.append(np.take_along_axis(ps, order, axis=1))
        return np.concatenate(all_s).astype(np.float32), np.concatenate(all_i).astype(np.int64)

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
            "size": len(self),
        }
        (folder / "index.json").write_text(json.dumps(settings, indent=2))
        np.save(folder / "labels.npy", self.labels, allow_pickle=False)
        np.save(folder / "ids.npy", self.ids, allow_pickle=False)
        if self.backend == "faiss":
            _import_faiss().write_index(self._faiss_index, str(folder / "index.faiss"))
        else:
            emb = self._exact_embeddings() if self._emb else np.zeros((0, self.dim), np.float32)
            np.save(folder / "embeddings.npy", emb, allow_pickle=False)
        return folder

    @classmethod
    def load(cls, folder) -> GalleryIndex:
        """Reads an index written by :meth:`save`."""
        folder = Path(folder)
        settings_path = folder / "index.json"
        if not settings_path.is_file():
            raise FileNotFoundError(f"{settings_path}: not a GalleryIndex folder (no index.json)")
        s = json.loads(settings_path.read_text())
        index = cls.__new__(cls)
        index.dim, index.metric, index.backend = int(s["dim"]), s["metric"], s["backend"]
        index.nlist = s["nlist"]
        index.nprobe, index.chunk_size = int(s["nprobe"]), s["chunk_size"]
        index._labels = [np.load(folder / "labels.npy", allow_pickle=False)]
        index._ids = [np.load(folder / "ids.npy", allow_pickle=False)]
        index._emb, index._faiss_index = [], None
        if index.backend == "faiss":
            faiss = _import_faiss()
            index._faiss_index = faiss.read_index(str(folder / "index.faiss"))
            if index.nlist is not None:
                faiss.extract_index_ivf(index._faiss_index).nprobe = index.nprobe
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
