"""Throughput and single-query latency of the retrieval metrics and of gallery search.

    PYTHONPATH=. python bench/retrieval_bench.py
    PYTHONPATH=. python bench/retrieval_bench.py --queries 1000 --gallery 100000 --dim 128 \
        --latency_galleries 10000,100000,1000000 --latency_requests 200,200,100

One run; the last line on stdout is one JSON object (progress and SavedModel save times go to
stderr). Its keys:

Throughput (``--queries`` queries, ``--classes`` class centres + noise):

* ``queries``, ``gallery``, ``dim``, ``map_all``: the metric workload (``--gallery`` x
  ``--dim``) and its mAP@all.
* ``metric_queries_per_s``: `retrieval_metrics` (all metrics, chunked).
* ``sklearn_loop_queries_per_s``: the same mAP@all with a per-query
  ``sklearn.metrics.average_precision_score`` loop on ``--sklearn_queries`` queries;
  ``ratio_vs_sklearn_loop`` = ours / sklearn.
* ``exact_search_queries_per_s``, ``faiss_flat_search_queries_per_s``: exact top-``--k`` of
  all the queries in one batch over a ``--gallery`` x ``--search_dim`` gallery (100k x 256,
  top-10 by default) with :class:`sketch_tf.index.GalleryIndex`: the TensorFlow `exact_top_k`
  graph (which also runs inside exported retrieval signatures) and faiss ``IndexFlatL2``, best
  of ``--repeats`` (the two take turns); ``search`` names the workload.
* ``time_ratio_vs_faiss_100k`` = exact time / faiss flat time of that batch (lower is better;
  target <= 1.2).
* ``peak_rss_mb_throughput``: peak RSS after this part.

Latency (single-query requests, batch 1, top-``--k``, one gallery of each of
``--latency_galleries`` rows x ``--search_dim`` float32, the same class centres + noise; the
same ``--latency_requests`` random queries for every method, the methods taking turns request
by request; every method is warmed up (first trace) on ``--warmup`` other queries first).
``<n>`` is the gallery size: ``10k``, ``100k``, ``1m``:

* ``<method>_queries_per_s_<n>``: requests / summed request time; ``<method>_p50_ms_<n>`` and
  ``<method>_p99_ms_<n>``: median and 99th percentile request latency in ms (of 100 requests,
  about the second slowest). A request's time includes turning the query into a tensor and
  the ids back into NumPy. Methods:

  - ``exact``: `sketch_tf.index.exact_top_k` (eager call of its tf.function, Python int k) on a
    precomputed `search_matrix`, as ``GalleryIndex(backend="exact")`` searches.
  - ``signature``: the exported ``search`` signature of a retrieval servable (as
    `sketch_tf.families.zs_sbir.serving` builds it): a `ServingGallery` (euclidean search
    matrix, keys ``img<i>``, class labels) in a `tf.Module`, the tf.function ``search(embedding
    float32 [None, D], k int32 scalar) -> gallery.top_k(embedding, k)``, saved with
    `tf.saved_model.save` to a temporary folder, loaded with `tf.saved_model.load` and called
    as ``loaded.signatures["search"](embedding=..., k=tf.constant(k))``.
  - ``faiss_flat``: faiss ``IndexFlatL2``.
  - ``faiss_ivf`` (galleries of >= ``--ivf_min_gallery`` rows only, 1M by default): faiss
    ``IndexIVFFlat`` with ``--ivf_nlist`` lists (k-means on the gallery) visiting
    ``--ivf_nprobe`` lists per query; ``--ivf_nprobe=0`` (default) picks the smallest of 1, 2,
    3, 4, 6, 8, 12, 16, 24, ... whose recall@k on ``--ivf_calibration_queries`` held-out
    queries reaches ``--ivf_target_recall_pct`` (95).

* ``signature_matches_exact``: the signature's ids equal the exact path's ids for every timed
  query and for a batch of ``--match_queries`` queries, at every gallery size (mismatches are
  printed to stderr).
* ``signature_save_s_<n>``, ``signature_load_s_<n>``, ``savedmodel_mb_<n>``: the time to save
  (including building the `ServingGallery`) and to load the SavedModel, and its size on disk.
* ``ivf_recall_at_<k>_<n>``: the fraction of the exact path's top-k ids the IVF search returns,
  over the timed queries (target >= 0.95 at 1M: ``ivf_recall_at_10_1m``);
  ``ivf_nlist_<n>``, ``ivf_nprobe_<n>``, ``ivf_train_s_<n>`` (k-means), ``ivf_add_s_<n>``.
* ``latency``: the workload; ``faiss_threads``: faiss's OpenMP threads (``--faiss_threads``,
  0: faiss's default, one per core); ``peak_rss_mb``: peak RSS of the process; ``cpu``: the
  machine (`bench_args.cpu_description`); ``cpu_model`` and ``matmul_gflops``: the CPU and its
  fp32 matmul rate measured in this run (`bench_args.machine_figures`);
  ``exact_search_fraction_of_matmul`` / ``faiss_flat_search_fraction_of_matmul``: the batch
  search's FLOP rate (2 x gallery x search_dim per query) over that matmul rate.

On a shared machine the figures move with the load of other processes, faiss's most: its
OpenMP region (one per search, even of one query) waits whole scheduler slices for a thread
whose core another process holds (``--faiss_threads=1`` avoids that). Note ``uptime`` before
and after a run.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
from bench_args import cpu_description, fraction_of_matmul, machine_figures
from sklearn.metrics import average_precision_score

from sketch_tf.eval.retrieval import retrieval_metrics, similarity
from sketch_tf.index import GalleryIndex

_INT_FLAGS = dict(
    queries=1000, gallery=100000, dim=128, classes=25, sklearn_queries=50, search_dim=256,
    k=10, repeats=3, ivf_nlist=1024, ivf_nprobe=0, ivf_min_gallery=1000000,
    ivf_calibration_queries=200, ivf_target_recall_pct=95, match_queries=8, warmup=3,
    faiss_threads=0,
)  # fmt: skip
_LIST_FLAGS = dict(latency_galleries="10000,100000,1000000", latency_requests="200,200,100")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _flags() -> argparse.Namespace:
    """`bench_args.int_flags` plus the comma-separated integer lists of `_LIST_FLAGS`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in _INT_FLAGS.items():
        parser.add_argument(f"--{name}", type=int, default=value)
    for name, value in _LIST_FLAGS.items():
        parser.add_argument(f"--{name}", type=_int_list, default=_int_list(value))
    args = parser.parse_args()
    n_sizes, n_requests = len(args.latency_galleries), len(args.latency_requests)
    if n_requests == 1:
        args.latency_requests = args.latency_requests * n_sizes
    elif n_requests != n_sizes:
        parser.error(
            f"--latency_requests: one count or one per gallery ({n_sizes}), got {n_requests}"
        )
    return args


def _log(msg: str) -> None:
    print(f"[retrieval_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _clustered(rng, centres, labels, noise=1.5):
    """centres[labels] + noise * N(0, 1), float32."""
    out = rng.standard_normal((len(labels), centres.shape[1]), dtype=np.float32)
    out *= noise
    out += centres[labels]
    return out


def _folder_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 2**20


def _time_requests(methods, queries, warmup) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Calls every fn(query [1, D]) -> ids [1, k] of `methods` once per query, after `warmup`
    calls each; the methods take turns request by request (the first one rotating), so that
    load from other processes falls on all of them alike. Returns {name: (seconds [R],
    ids [R, k])}."""
    names = list(methods)
    for name in names:
        for q in warmup:
            methods[name](q)
    seconds = {name: [] for name in names}
    ids = {name: [] for name in names}
    for i, q in enumerate(queries):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t = time.perf_counter()
            out = methods[name](q)
            seconds[name].append(time.perf_counter() - t)
            ids[name].append(out)
    return {name: (np.asarray(seconds[name]), np.concatenate(ids[name])) for name in names}


def _record(figures, method, label, seconds) -> None:
    p50, p99 = np.percentile(seconds, [50, 99]) * 1000
    figures[f"{method}_queries_per_s_{label}"] = round(len(seconds) / seconds.sum(), 1)
    figures[f"{method}_p50_ms_{label}"] = round(float(p50), 3)
    figures[f"{method}_p99_ms_{label}"] = round(float(p99), 3)
    _log(
        f"{label} {method}: {figures[f'{method}_queries_per_s_{label}']} q/s, "
        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms"
    )


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def throughput(args, rng, figures):
    """The batch figures (metrics vs sklearn, exact vs faiss flat search on 100k x 256)."""
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    gl = rng.integers(0, args.classes, args.gallery)
    ql = rng.integers(0, args.classes, args.queries)
    g = centres[gl] + 1.5 * rng.normal(size=(args.gallery, args.dim)).astype(np.float32)
    q = centres[ql] + 1.5 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)

    t = time.perf_counter()
    out = retrieval_metrics(q, ql, g, gl)
    metric_s = time.perf_counter() - t

    m = args.sklearn_queries
    t = time.perf_counter()
    scores = similarity(q[:m], g)
    for i in range(m):
        average_precision_score(gl == ql[i], scores[i])
    sk_s = time.perf_counter() - t

    figures.update(
        {
            "queries": args.queries,
            "gallery": args.gallery,
            "dim": args.dim,
            "map_all": round(out["map_all"], 4),
            "metric_queries_per_s": round(args.queries / metric_s, 1),
            "sklearn_loop_queries_per_s": round(m / sk_s, 1),
            "ratio_vs_sklearn_loop": round((args.queries / metric_s) / (m / sk_s), 2),
        }
    )
    # Search: the same queries and labels, a gallery of --search_dim features.
    centres = rng.normal(size=(args.classes, args.search_dim)).astype(np.float32)
    g = centres[gl] + 1.5 * rng.normal(size=(args.gallery, args.search_dim)).astype(np.float32)
    q = centres[ql] + 1.5 * rng.normal(size=(args.queries, args.search_dim)).astype(np.float32)
    indexes = {"exact": GalleryIndex(args.search_dim)}
    indexes["faiss_flat"] = GalleryIndex(args.search_dim, backend="faiss")
    times = {}
    for index in indexes.values():
        index.add(g, gl)
        index.search(q[:8], args.k)  # warm-up (imports, first trace)
    for _ in range(args.repeats):  # the backends take turns (load from other processes)
        for name, index in indexes.items():
            t = time.perf_counter()
            index.search(q, args.k)
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - t)
    for name, best in times.items():
        figures[f"{name}_search_queries_per_s"] = round(args.queries / best, 1)
    del indexes
    figures["search"] = f"top-{args.k}, {args.gallery} x {args.search_dim}"
    figures["time_ratio_vs_faiss_100k"] = round(times["exact"] / times["faiss_flat"], 3)
    _log(
        f"throughput done: exact {figures['exact_search_queries_per_s']} q/s, faiss flat "
        f"{figures['faiss_flat_search_queries_per_s']} q/s, "
        f"ratio {figures['time_ratio_vs_faiss_100k']}"
    )


def _signature_fn(tf, vectors, keys, labels, dim, label, figures, folder):
    """Saves and loads the `search` signature of a `ServingGallery`; returns the loaded one."""
    from sketch_tf.export.gallery import ServingGallery  # noqa: PLC0415

    t = time.perf_counter()
    gallery = ServingGallery(vectors, keys, labels, "euclidean", {"bench": "retrieval"})
    module = tf.Module()
    module.gallery = gallery

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, dim], tf.float32, name="embedding"),
            tf.TensorSpec([], tf.int32, name="k"),
        ]
    )
    def search(embedding, k):
        return gallery.top_k(embedding, k)

    module.search = search
    tf.saved_model.save(module, folder, signatures={"search": search.get_concrete_function()})
    save_s = time.perf_counter() - t
    size_mb = _folder_mb(folder)
    _log(f"{label} signature: SavedModel saved in {save_s:.1f} s ({size_mb:.0f} MB)")
    t = time.perf_counter()
    loaded = tf.saved_model.load(folder)
    load_s = time.perf_counter() - t
    _log(f"{label} signature: loaded in {load_s:.1f} s")
    figures[f"signature_save_s_{label}"] = round(save_s, 2)
    figures[f"signature_load_s_{label}"] = round(load_s, 2)
    figures[f"savedmodel_mb_{label}"] = round(size_mb, 1)
    return loaded


def _nprobe_grid(nlist: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... (steps of about sqrt 2) up to nlist."""
    grid = {p for i in range(nlist.bit_length()) for p in (2**i, 3 * 2**i // 2)}
    return sorted(p for p in grid | {nlist} if p <= nlist)


def _ivf(faiss, g, k, args, label, calib_q, calib_truth, figures):
    """An `IndexIVFFlat` over g, its nprobe calibrated on held-out queries (see the docstring)."""
    quantizer = faiss.IndexFlatL2(g.shape[1])
    ivf = faiss.IndexIVFFlat(quantizer, g.shape[1], args.ivf_nlist, faiss.METRIC_L2)
    t = time.perf_counter()
    ivf.train(g)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    ivf.add(g)
    add_s = time.perf_counter() - t
    _log(f"{label} faiss ivf: nlist {args.ivf_nlist}, train {train_s:.1f} s, add {add_s:.1f} s")
    nprobe = args.ivf_nprobe
    if nprobe <= 0:
        target = args.ivf_target_recall_pct / 100
        for nprobe in _nprobe_grid(args.ivf_nlist):
            ivf.nprobe = nprobe
            rec = _recall(ivf.search(calib_q, k)[1], calib_truth)
            _log(f"{label} faiss ivf calibration: nprobe {nprobe} recall@{k} {rec:.4f}")
            if rec >= target:
                break
    ivf.nprobe = nprobe
    figures[f"ivf_nlist_{label}"] = args.ivf_nlist
    figures[f"ivf_nprobe_{label}"] = nprobe
    figures[f"ivf_train_s_{label}"] = round(train_s, 2)
    figures[f"ivf_add_s_{label}"] = round(add_s, 2)
    return ivf, quantizer


def latency(args, rng, figures):
    """Batch-1 request latency of every method at every gallery size (see the docstring)."""
    import faiss  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from sketch_tf.index import exact_top_k, search_matrix  # noqa: PLC0415

    k, dim = args.k, args.search_dim
    largest, n_req = max(args.latency_galleries), max(args.latency_requests)
    centres = rng.normal(size=(args.classes, dim)).astype(np.float32)
    t = time.perf_counter()
    gl_all = rng.integers(0, args.classes, largest)
    g_all = _clustered(rng, centres, gl_all)  # every gallery is a prefix of this one
    n_extra = args.warmup + args.match_queries + args.ivf_calibration_queries
    q_all = _clustered(rng, centres, rng.integers(0, args.classes, n_req + n_extra))
    _log(f"latency data: {largest} x {dim} in {time.perf_counter() - t:.1f} s")
    requests = [q_all[i : i + 1] for i in range(n_req)]
    warm = [q_all[n_req + i : n_req + i + 1] for i in range(args.warmup)]
    match_q = q_all[n_req + args.warmup : n_req + args.warmup + args.match_queries]
    calib_q = q_all[n_req + args.warmup + args.match_queries :]
    k_t = tf.constant(k, tf.int32)
    all_match = True
    for n, n_requests in zip(args.latency_galleries, args.latency_requests, strict=True):
        label, g, queries = _label(n), g_all[:n], requests[:n_requests]
        matrix = search_matrix(g, "euclidean")

        def exact(q, matrix=matrix):
            return exact_top_k(q, None, k, "euclidean", matrix=matrix)[1].numpy()

        folder = tempfile.mkdtemp(prefix=f"retrieval_bench_{label}_")
        try:
            keys = np.asarray([f"img{i}" for i in range(n)], dtype=object)
            labels = np.asarray([f"class{c}" for c in gl_all[:n]], dtype=object)
            loaded = _signature_fn(tf, g, keys, labels, dim, label, figures, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the loaded variables are in memory
        del keys, labels
        sig = loaded.signatures["search"]

        def signature(q, sig=sig):
            return sig(embedding=tf.constant(q), k=k_t)["ids"].numpy()

        flat = faiss.IndexFlatL2(dim)
        flat.add(g)
        methods = {
            "exact": exact,
            "signature": signature,
            "faiss_flat": lambda q, flat=flat: flat.search(q, k)[1],
        }
        ivf = None
        if n >= args.ivf_min_gallery:
            calib_truth = exact(calib_q)
            ivf, quantizer = _ivf(faiss, g, k, args, label, calib_q, calib_truth, figures)
            methods["faiss_ivf"] = lambda q, ivf=ivf: ivf.search(q, k)[1]
        timed = _time_requests(methods, queries, warm)
        for name, (seconds, _) in timed.items():
            _record(figures, name, label, seconds)

        exact_ids, sig_ids = timed["exact"][1], timed["signature"][1]
        batch_match = np.array_equal(signature(match_q), exact(match_q))
        match = np.array_equal(sig_ids, exact_ids) and batch_match
        if not match:
            bad = int((sig_ids != exact_ids).any(1).sum())
            _log(
                f"{label} signature ids differ from exact: {bad} of {len(queries)} requests, "
                f"batch of {len(match_q)} {'equal' if batch_match else 'differs'}"
            )
        all_match = all_match and match
        if ivf is not None:
            rec = _recall(timed["faiss_ivf"][1], exact_ids)
            figures[f"ivf_recall_at_{k}_{label}"] = round(rec, 4)
            _log(f"{label} faiss ivf: nprobe {ivf.nprobe}, recall@{k} {rec:.4f} (timed queries)")
            del ivf, quantizer
        del matrix, exact, loaded, sig, signature, flat, methods, timed
        _log(f"{label} done, peak RSS {_peak_rss_mb()} MB")
    figures["signature_matches_exact"] = all_match
    sizes = ", ".join(
        f"{_label(n)} ({r} requests)"
        for n, r in zip(args.latency_galleries, args.latency_requests, strict=True)
    )
    figures["latency"] = f"batch 1, top-{k}, galleries x {dim}: {sizes}"


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main():
    args = _flags()
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    figures = {}
    import faiss  # noqa: PLC0415

    if args.faiss_threads > 0:
        faiss.omp_set_num_threads(args.faiss_threads)
    figures["faiss_threads"] = faiss.omp_get_max_threads()
    throughput(args, rng, figures)
    figures["peak_rss_mb_throughput"] = _peak_rss_mb()
    latency(args, rng, figures)
    figures["peak_rss_mb"] = _peak_rss_mb()
    figures["cpu"] = cpu_description()
    figures.update(machine_figures())
    # A batch search is one [Q, D] x [D, N] product: 2 N D FLOPs per query (the selection
    # and faiss's norms add O(N) per query).
    flops_per_query = 2 * args.gallery * args.search_dim
    for name in ("exact_search", "faiss_flat_search"):
        rate = figures[f"{name}_queries_per_s"] * flops_per_query
        figures[f"{name}_fraction_of_matmul"] = fraction_of_matmul(rate, figures["matmul_gflops"])
    _log(f"total {time.perf_counter() - t:.1f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
