"""SavedModel signatures of the zero-shot SBIR family, its serving gallery and warmup inputs.

Every image signature comes twice (`sketch_tf.export.inputs.with_float_variant`): `images`
as encoded bytes tf.string [N] (PNG / JPEG, any size), and in `<name>_floats` as float32
[N, H, W, 3] in [0, 1] of any size.

- `embed_sketch`, `embed_photo` (+ `_floats`): `images` -> `embedding` float32 [N, E].
- `retrieve` (+ `_floats`), with a gallery (`export.py --gallery=RECORDS`): `images` [Q]
  sketches + `k` int32 scalar -> the exact top-k of the gallery by `eval.metric`, as
  evaluation ranks: `keys` string [Q, k'], `labels` string [Q, k'] (class names), `ids` int64
  [Q, k'] (gallery rows), `scores` float32 [Q, k'] (minus the L2 distance, or the cosine),
  `k` int32 (k' = min(k, gallery size)), `clipped` bool (k was larger than the gallery).
- `search` (with a gallery): `embedding` float32 [Q, E] (a sketch embedding) + `k` -> the same
  outputs as `retrieve`.
- `serving_default` = `retrieve` with a gallery, else `embed_sketch`.

Images go through the serving input layer (`sketch_tf.export.inputs`) exactly as evaluation
preprocesses records: sketches keep their aspect with white padding, photos are resized and
centre-cropped to `data.image_size`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.core.png import encode_png
from sketch_tf.data import tfrecord
from sketch_tf.export import gallery as gallery_lib
from sketch_tf.export import inputs
from sketch_tf.families import retrieval
from sketch_tf.models import zs_sbir as zs_models


def _query(embedding, metric: str):
    if metric == "cosine":
        return gallery_lib.unit_rows(embedding)
    return tf.convert_to_tensor(embedding, tf.float32)


class ZsSbirRetrieval(retrieval.TestGalleryRetrieval):
    """The `Retrieval` of the zero-shot SBIR family: sketches against photo embeddings,
    ranked by `eval.metric` (unit rows for cosine, so that a blank image scores 0); its
    default gallery, the photos of the unseen classes in the test records (what evaluation
    ranks)."""

    def gallery_classes(self) -> tuple[str, ...]:
        """The unseen classes of the test records (`ZsSbirTask.class_split`): the default
        gallery is the one evaluation ranked (a zero-shot model is judged on classes it never
        saw); the seen classes' test photos are left out. A folder the user names
        (`export.py --gallery=RECORDS`) keeps every class."""
        names = tfrecord.read_manifest(self.gallery_records())["classes"]
        return tuple(self.task.class_split(names)[1])

    def gallery_domains(self) -> list[str]:
        """The record domains a gallery holds: the photos."""
        return [self.task.config.data.photo_domain]

    def gallery_embed(self, models, records_dir: str, classes=None):
        """A batch {"image": preprocessed photos float32 [B, S, S, 3], "image_key": int64
        [B]} of `records_dir` -> {"photo": embeddings [B, E]}: the photo tower's head on the
        cached trunk features of the folder's photos of `classes` (names; None: all) with
        `data.feature_cache` (`ZsSbirTask.gallery_caches`), else the photo tower."""
        task = self.task
        if not task.uses_feature_cache():
            photo = zs_models.photo_tower(models)
            return lambda b: {"photo": photo(b["image"], training=False)}
        cached = task.gallery_caches(models, records_dir, classes)["photo"]
        lookup = cached.lookup(f"zs_sbir gallery {records_dir}")
        head = task.tower_heads(models)["photo"]
        return lambda b: {"photo": head(lookup(b["image_key"]), training=False)}

    def index_vectors(self, embeddings: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        """Gallery embeddings -> (rows of a `GalleryIndex` float32 [N, E], its metric): the
        photo embeddings with `eval.metric` (unit rows for cosine: a blank image scores 0)."""
        metric = str(self.task.config.eval.metric)
        return _query(embeddings["photo"], metric).numpy(), metric

    def query_vectors(self, models, sketches, exemplars=None, alpha=None) -> np.ndarray:
        """Preprocessed sketches float32 [Q, S, S, 3] -> index query rows [Q, E]
        (`index_vectors`' space). `exemplars` / `alpha` are for the style family: refused."""
        retrieval.refuse_style_inputs("zs_sbir", exemplars, alpha)
        e = zs_models.sketch_tower(models)(sketches, training=False)
        return _query(e, str(self.task.config.eval.metric)).numpy()


class ZsSbirServing(retrieval.TaskBound):
    """The `Serving` of the zero-shot SBIR family: the signatures of the module docstring."""

    def signatures(self, models, gallery=None) -> dict[str, Any]:
        """The signatures above (name -> concrete function)."""
        task = self.task
        size = self.image_size()
        metric = str(task.config.eval.metric)
        towers = {"sketch": zs_models.sketch_tower(models), "photo": zs_models.photo_tower(models)}
        embedders = {
            role: (lambda x, tower=tower: tower(x, training=False))
            for role, tower in towers.items()
        }
        out = retrieval.embed_signatures(size, embedders, ["sketch"])
        if gallery is None:
            out["serving_default"] = out["embed_sketch"]
            return out
        width = int(towers["sketch"].output.shape[-1])
        out.update(
            retrieval.sketch_search_signatures(
                gallery, size, embedders["sketch"], width, lambda e: _query(e, metric)
            )
        )
        return out

    def warmup_inputs(self, signatures=None) -> dict[str, dict[str, Any]]:
        """One request per signature on the shared example drawing (inverted for the photo);
        the export keeps those of the signatures it writes."""
        img, png, floats = retrieval.example_images(self.image_size())
        width = inputs.input_width(signatures, "search", "embedding")
        requests = {
            **retrieval.sketch_warmup_requests(png, floats),
            "embed_photo": {"images": np.array([encode_png(255 - img)], dtype=object)},
            "embed_photo_floats": {"images": 1.0 - floats},
            "search": {"embedding": np.ones((1, width), np.float32), "k": np.int32(2)},
        }
        return retrieval.with_default_request(requests, signatures, "embed_sketch")
