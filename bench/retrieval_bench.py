"""Throughput of the retrieval metrics and of the gallery index backends.

    PYTHONPATH=. python bench/retrieval_bench.py --queries 1000 --gallery 100000 --dim 128

Figures (last line, JSON): ``metric_queries_per_s`` (retrieval_metrics, all metrics, chunked),
``sklearn_loop_queries_per_s`` (the same mAP@all with a per-query
``sklearn.metrics.average_precision_score`` loop on a subset), ``ratio_vs_sklearn_loop``
(ours / sklearn); exact top-``--k`` search of the same queries over a ``--gallery`` x
``--search_dim`` gallery (100k x 256, top-10 by default) with
:class:`sketch_tf.index.GalleryIndex`: ``exact_search_queries_per_s`` (the TensorFlow
`exact_top_k` graph, which also runs inside exported retrieval signatures) and
``faiss_flat_search_queries_per_s`` (faiss ``IndexFlatL2``), best of ``--repeats``, with
``time_ratio_vs_faiss_100k`` = exact time / faiss time (lower is better; target <= 1.2);
``peak_rss_mb`` of the process and ``cpu``.
"""

import json
import resource
import time

import numpy as np
from bench_args import cpu_description, int_flags
from sklearn.metrics import average_precision_score

from sketch_tf.eval.retrieval import retrieval_metrics, similarity
from sketch_tf.index import GalleryIndex


def main():
    args = int_flags(
        __doc__.splitlines()[0], queries=1000, gallery=100000, dim=128, classes=25,
        sklearn_queries=50, search_dim=256, k=10, repeats=3,
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
    # Search: the same queries and labels, a gallery of --search_dim features.
    centres = rng.normal(size=(args.classes, args.search_dim)).astype(np.float32)
    g = centres[gl] + 1.5 * rng.normal(size=(args.gallery, args.search_dim)).astype(np.float32)
    q = centres[ql] + 1.5 * rng.normal(size=(args.queries, args.search_dim)).astype(np.float32)
    times = {}
    for name, kwargs in (("exact", {}), ("faiss_flat", {"backend": "faiss"})):
        index = GalleryIndex(args.search_dim, **kwargs)
        index.add(g, gl)
        index.search(q[:8], args.k)  # warm-up (imports, first trace)
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            index.search(q, args.k)
            best = min(best, time.perf_counter() - t)
        times[name] = best
        figures[f"{name}_search_queries_per_s"] = round(args.queries / best, 1)
    figures["search"] = f"top-{args.k}, {args.gallery} x {args.search_dim}"
    figures["time_ratio_vs_faiss_100k"] = round(times["exact"] / times["faiss_flat"], 3)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["cpu"] = cpu_description()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
