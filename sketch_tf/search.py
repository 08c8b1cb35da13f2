"""Query-time retrieval for `retrieve.py`: a trained run or an export against a gallery.

Two ways to search, the same ranking as evaluation (exact search ties in gallery order):

- a trained run (`Run`) with a `sketch_tf.index.GalleryIndex` built from a labelled-image
  records folder (`build_index`: the gallery towers and `index_vectors` of the task's
  `Retrieval`) or loaded from a folder saved by it (`load_index`, refused when its manifest
  names another model); queries embedded in process (`Retrieval.query_vectors`);
- an export version folder whose `retrieve` signature holds its gallery
  (`export.py --gallery`): `query_export` runs that signature, as TF Serving would.

Results are dicts {"keys", "labels", "rows", "scores"} (lists, best first). `gallery_images`
reads the encoded images of result rows back from the gallery's records (the n-th record of
the gallery domains, and of its classes when the gallery was restricted to some, in shard
order is row n) for the result grid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf import index as index_lib
from sketch_tf.data import pipeline, schema
from sketch_tf.export import gallery as gallery_lib

#: The keys of `Run.manifest()` an index must share with the model that queries it.
MODEL_KEYS = ("task", "checkpoint", "step", "config_sha256")


def build_index(
    run,
    records_dir: str,
    factory: str | None = None,
    nprobe: int = 16,
    classes: Sequence[str] | None = None,
):
    """Embeds the gallery domains of `records_dir` with the run's towers into a GalleryIndex.

    Args:
      run: a loaded `sketch_tf.train.run.Run` of a retrieval family.
      records_dir: a labelled-image records folder (prepare_data.py).
      factory: None for exact search, else a faiss index factory string ("IVF4096,Flat",
        "IVF4096,PQ32", "HNSW32") for millions of images (approximate).
      classes: the class names to index; None (retrieve.py's `--gallery`) = every class: the
        user's folder is the user's gallery. The export's default gallery is
        `run.task.retrieval().gallery_classes()` of the test records.

    Returns:
      GalleryIndex with ids = record keys (`gallery.record_key`), labels = class names and
      manifest = `run.manifest()` + {"records", "domains", "classes"}
      (`gallery.family_gallery`, the rows a `retrieve` signature's gallery of that folder
      and those classes holds).
    """
    g = gallery_lib.family_gallery(run.task, run.models, records_dir, classes)
    manifest = {
        **run.manifest(),
        "records": g["records"],
        "domains": g["domains"],
        "classes": g["classes"],
    }
    kwargs = {} if factory is None else {"backend": "faiss", "factory": factory, "nprobe": nprobe}
    index = index_lib.GalleryIndex(
        g["vectors"].shape[1], metric=g["metric"], manifest=manifest, **kwargs
    )
    index.add(g["vectors"], labels=g["labels"], ids=g["keys"])
    return index


def load_index(run, folder: str):
    """`GalleryIndex.load(folder)`, refused (ValueError naming the keys) when it was built by
    another model than `run` (task, checkpoint, step, config)."""
    expected = {k: v for k, v in run.manifest().items() if k in MODEL_KEYS}
    return index_lib.GalleryIndex.load(folder, expect_manifest=expected)


def query_run(
    run, index, query: bytes, k: int, exemplar: bytes | None = None, alpha: float | None = None
) -> dict[str, list]:
    """Top-k of one query (encoded sketch, plus exemplar and alpha for style) with `index`."""
    size = int(run.task.config.data.image_size)
    retrieval = gallery_lib.required_retrieval(run.task)
    sketch = pipeline.preprocess(tf.constant(query), True, size, False)[None]
    ex = None if exemplar is None else pipeline.preprocess(tf.constant(exemplar), False, size,
                                                           False)[None]  # fmt: skip
    vectors = retrieval.query_vectors(run.models, sketch, ex, alpha)
    scores, rows = index.search(vectors, k)
    rows, scores = rows[0], scores[0]
    keep = rows >= 0  # an IVF search may find fewer than k
    rows, scores = rows[keep], scores[keep]
    return {
        "keys": [str(index.ids[r]) for r in rows],
        "labels": [str(index.labels[r]) for r in rows],
        "rows": [int(r) for r in rows],
        "scores": [float(s) for s in scores],
        "records": index.manifest.get("records"),
        "domains": index.manifest.get("domains"),
        "classes": index.manifest.get("classes"),
    }


def export_version(export_dir: str) -> str:
    """`export_dir` itself when it holds a saved_model.pb, else its newest integer version."""
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = sorted(int(n) for n in os.listdir(export_dir) if n.isdigit()) if os.path.isdir(
        export_dir) else []  # fmt: skip
    if not versions:
        raise ValueError(f"{export_dir}: no saved_model.pb and no version folder in it")
    return os.path.join(export_dir, str(versions[-1]))


def query_export(
    export_dir: str,
    query: bytes,
    k: int,
    exemplar: bytes | None = None,
    alpha: float | None = None,
) -> dict[str, Any]:
    """Top-k of one query through the `retrieve` signature of an export (gallery inside)."""
    path = export_version(export_dir)
    loaded = tf.saved_model.load(path)
    if "retrieve" not in loaded.signatures:
        raise ValueError(
            f"{path}: no `retrieve` signature (exported without a gallery: export.py --gallery)"
        )
    fn = loaded.signatures["retrieve"]
    names = set(fn.structured_input_signature[1])
    feeds: dict[str, tf.Tensor] = {"k": tf.constant(int(k), tf.int32)}
    if "sketches" in names:  # style: sketch + exemplar + alpha
        if exemplar is None or alpha is None:
            raise ValueError(f"{path}: style retrieval needs --exemplar and --alpha")
        feeds.update(
            sketches=tf.constant([query]),
            exemplars=tf.constant([exemplar]),
            alpha=tf.constant(float(alpha)),
        )
    else:
        if exemplar is not None or alpha is not None:
            raise ValueError(f"{path}: this model retrieves by sketch only (no --exemplar/--alpha)")
        feeds["images"] = tf.constant([query])
    out = fn(**feeds)
    manifest_path = os.path.join(path, gallery_lib.MANIFEST_FILE)
    manifest = {}
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    return {
        "keys": [x.decode() for x in out["keys"].numpy()[0]],
        "labels": [x.decode() for x in out["labels"].numpy()[0]],
        "rows": [int(x) for x in out["ids"].numpy()[0]],
        "scores": [float(x) for x in out["scores"].numpy()[0]],
        "clipped": bool(out["clipped"].numpy()),
        "records": manifest.get("records"),
        "domains": manifest.get("domains"),
        "classes": manifest.get("classes"),
        "export": path,
    }


def gallery_images(
    records_dir: str, domains: list[str], rows: list[int], classes: list[str] | None = None
) -> dict[int, bytes]:
    """{row: encoded image} of gallery rows (the records of `domains` and `classes`, None:
    all, in shard order), read back from its records (one pass, no decoding). Raises
    ValueError when a row is past the records' end."""
    wanted, found = set(rows), {}
    records = pipeline.labelled_records(records_dir, domains, classes)
    for i, r in enumerate(records.map(lambda r: r[schema.IMAGE]).as_numpy_iterator()):
        if i in wanted:
            found[i] = r
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{records_dir}: gallery rows {missing} not found (records changed?)")
    return found


def _decode(data: bytes) -> np.ndarray:
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def result_grid(
    result: dict, query: bytes, exemplar: bytes | None = None, query_label: str | None = None
):
    """A PIL image (`plots.retrieval_grid`): the query (and exemplar), then the results best
    first, read back from the gallery's records. Frames are green / red when `query_label`
    (the query's class, if the user knows it) equals / differs from a result's label, grey
    without it."""
    from sketch_tf.eval import plots  # noqa: PLC0415 - PIL drawing only when a grid is asked

    if not result.get("records"):
        raise ValueError("no gallery records recorded with this index / export: no grid")
    images = gallery_images(
        result["records"], result["domains"], result["rows"], result.get("classes")
    )
    results = [_decode(images[r]) for r in result["rows"]]
    correct = None
    if query_label is not None:
        correct = np.array([[label == query_label for label in result["labels"]]])
    return plots.retrieval_grid(
        [_decode(query)],
        [results],
        correct,
        exemplar_images=None if exemplar is None else [_decode(exemplar)],
    )


__all__ = [
    "build_index",
    "export_version",
    "gallery_images",
    "load_index",
    "query_export",
    "query_run",
    "result_grid",
]
