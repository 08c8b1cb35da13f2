"""Throughput of the retrieval metrics and of the gallery index backends.

    PYTHONPATH=. python bench/retrieval_bench.py --queries 1000 --gallery 100000 --dim 128

Figures (last line, JSON): ``metric_queries_per_s`` (retrieval_metrics, all metrics, chunked),
``sklearn_loop_queries_per_s`` (the same mAP@all with a per-query
``sklearn.metrics.average_precision_score`` loop on a subset), ``ratio_vs_sklearn_loop``
(ours / sklearn), and ``exact_search_queries_per_s`` / ``faiss_flat_search_queries_per_s`` for
top-200 search with :class:`sketch_tf.index.GalleryIndex`, ``peak_rss_mb`` of the process.
"""

import json
import resource
import time

import numpy as np
from bench_args import int_flags
from sklearn.metrics import average_precision_score

from sketch_tf.eval.retrieval import retrieval_metrics, similarity
from sketch_tf.index import GalleryIndex


def main():
    args = int_flags(
        __doc__.splitlines()[0], queries=1000, gallery=100000, dim=128, classes=25,
        sklearn_queries=50,
    )  # fmt: skip

    rng = np.random.default_rng(0)
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

    figures = {
        "queries": args.queries,
        "gallery": args.gallery,
        "dim": args.dim,
        "map_all": round(out["map_all"], 4),
        "metric_queries_per_s": round(args.queries / metric_s, 1),
        "sklearn_loop_queries_per_s": round(m / sk_s, 1),
        "ratio_vs_sklearn_loop": round((args.queries / metric_s) / (m / sk_s), 2),
    }
    for name, kwargs in (("exact", {}), ("faiss_flat", {"backend": "faiss"})):
        index = GalleryIndex(args.dim, **kwargs)
        index.add(g, gl)
        t = time.perf_counter()
        index.search(q, 200)
        figures[f"{name}_search_queries_per_s"] = round(args.queries / (time.perf_counter() - t), 1)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
