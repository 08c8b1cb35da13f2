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

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data.images import encode_png
from sketch_tf.export import gallery as gallery_lib
from sketch_tf.export import inputs
from sketch_tf.models import zs_sbir as zs_models

_K = tf.TensorSpec([], tf.int32, name="k")


def _query(embedding, metric: str):
    if metric == "cosine":
        return gallery_lib.unit_rows(embedding)
    return tf.convert_to_tensor(embedding, tf.float32)


@dataclasses.dataclass
class ZsSbirRetrieval:
    """The `Retrieval` of the zero-shot SBIR family: sketches against photo embeddings,
    ranked by `eval.metric` (unit rows for cosine, so that a blank image scores 0)."""

    task: Any  # the family's Task

    def gallery_records(self) -> str:
        """The test records (the photos of every class in them)."""
        return self.task.records_dir("test")

    def gallery_domains(self) -> list[str]:
        """The record domains a gallery holds: the photos."""
        return [self.task.config.data.photo_domain]

    def gallery_embed(self, models):
        """Preprocessed gallery images float32 [B, S, S, 3] -> {"photo": embeddings [B, E]}."""
        photo = zs_models.photo_tower(models)
        return lambda x: {"photo": photo(x, training=False)}

    def index_vectors(self, embeddings: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        """Gallery embeddings -> (rows of a `GalleryIndex` float32 [N, E], its metric): the
        photo embeddings with `eval.metric` (unit rows for cosine: a blank image scores 0)."""
        metric = str(self.task.config.eval.metric)
        return _query(embeddings["photo"], metric).numpy(), metric

    def query_vectors(self, models, sketches, exemplars=None, alpha=None) -> np.ndarray:
        """Preprocessed sketches float32 [Q, S, S, 3] -> index query rows [Q, E]
        (`index_vectors`' space). `exemplars` / `alpha` are for the style family: refused."""
        if exemplars is not None or alpha is not None:
            raise ValueError("zs_sbir retrieval takes a sketch only (no --exemplar / --alpha)")
        e = zs_models.sketch_tower(models)(sketches, training=False)
        return _query(e, str(self.task.config.eval.metric)).numpy()


@dataclasses.dataclass
class ZsSbirServing:
    """The `Serving` of the zero-shot SBIR family: the signatures of the module docstring."""

    task: Any  # the family's Task

    def signatures(self, models, gallery=None) -> dict[str, Any]:
        """The signatures above (name -> concrete function)."""
        task = self.task
        size = int(task.config.data.image_size)
        metric = str(task.config.eval.metric)
        towers = {"sketch": zs_models.sketch_tower(models), "photo": zs_models.photo_tower(models)}
        out = {}
        for role, tower in towers.items():
            out.update(
                inputs.with_float_variant(
                    f"embed_{role}",
                    lambda x, _, tower=tower: {"embedding": tower(x["images"], training=False)},
                    ["images"],
                    [],
                    inputs.prepare_batch(size, is_sketch=role == "sketch"),
                )
            )
        if gallery is None:
            out["serving_default"] = out["embed_sketch"]
            return out

        sketch = towers["sketch"]
        out.update(
            inputs.with_float_variant(
                "retrieve",
                lambda x, extra: gallery.top_k(
                    _query(sketch(x["images"], training=False), metric), extra["k"]
                ),
                ["images"],
                [_K],
                inputs.prepare_batch(size, is_sketch=True),
            )
        )
        width = int(sketch.output.shape[-1])

        @tf.function(
            input_signature=[tf.TensorSpec([None, width], tf.float32, name="embedding"), _K]
        )
        def search(embedding, k):
            return gallery.top_k(_query(embedding, metric), k)

        out["search"] = search.get_concrete_function()
        out["serving_default"] = out["retrieve"]
        return out

    def warmup_inputs(self, signatures=None) -> dict[str, dict[str, Any]]:
        """One request per signature on the shared example drawing (inverted for the photo);
        the export keeps those of the signatures it writes."""
        img = inputs.example_drawing(int(self.task.config.data.image_size))
        png = encode_png(img)
        sketches = np.array([png, png], dtype=object)
        floats = img[None].astype(np.float32) / 255.0
        width = inputs.input_width(signatures, "search", "embedding")
        requests = {
            "embed_sketch": {"images": sketches},
            "embed_sketch_floats": {"images": floats},
            "embed_photo": {"images": np.array([encode_png(255 - img)], dtype=object)},
            "embed_photo_floats": {"images": 1.0 - floats},
            "retrieve": {"images": sketches, "k": np.int32(3)},
            "retrieve_floats": {"images": floats, "k": np.int32(3)},
            "search": {"embedding": np.ones((1, width), np.float32), "k": np.int32(2)},
        }
        has_retrieve = signatures is not None and "retrieve" in signatures
        requests["serving_default"] = requests["retrieve" if has_retrieve else "embed_sketch"]
        return requests
