"""SavedModel signatures of the fine-grained SBIR family, its serving gallery and warmup inputs.

Every image signature comes twice (`sketch_tf.export.inputs.with_float_variant`): `images`
as encoded bytes tf.string [N] (PNG / JPEG, any size), and in `<name>_floats` as float32
[N, H, W, 3] in [0, 1] of any size.

- `embed_sketch`, `embed_image` (+ `_floats`): `images` -> `embedding` float32 [N, E], unit
  rows, exactly the evaluation embedding (the whole image, or the mean of the 10 crop / flip
  views with `eval.multi_crop`; `sketch_tf.models.fg_sbir.embed_images`).
- `retrieve` (+ `_floats`), with a gallery (`export.py --gallery=RECORDS`, default the run's
  test records: their `data.image_domain` images of its `data.classes`): `images` [Q]
  sketches + `k` int32 -> the exact top-k of the gallery as evaluation ranks: `keys` string
  [Q, k'] (the records' `source`, e.g. ``shoes_edge_db_train.mat[42]``), `labels` string
  [Q, k'] (class names), `ids` int64 [Q, k'] (gallery rows), `scores` float32 [Q, k']
  (minus the L2 distance of unit embeddings), `k` int32 (k' = min(k, gallery size)),
  `clipped` bool.
- `search` (with a gallery): `embedding` float32 [Q, E] + `k` -> the outputs of `retrieve`.
- `serving_default` = `retrieve` with a gallery, else `embed_sketch`.

Images go through the serving input layer (`sketch_tf.export.inputs`) as evaluation
preprocesses records: sketches (and line-drawing galleries, `data.gallery_drawings`) keep
their aspect with white padding, photos are resized and centre-cropped to `data.image_size`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.export import inputs
from sketch_tf.families import retrieval
from sketch_tf.models import fg_sbir as fg_models

#: Embeddings are unit rows: the Euclidean ranking is the cosine ranking.
METRIC = "euclidean"


def _embedder(task, models, role: str):
    """float32 images [B, S, S, 3] -> embeddings [B, E] of the `role` tower, as evaluated."""
    tower = (fg_models.sketch_tower if role == "sketch" else fg_models.image_tower)(models)
    multi, crop = bool(task.config.eval.multi_crop), task.crop_cells()
    return lambda x: fg_models.embed_images(tower, x, multi_crop=multi, crop_cells=crop)


class FgSbirRetrieval(retrieval.TestGalleryRetrieval):
    """The `Retrieval` of the fine-grained SBIR family: sketches against the unit image
    embeddings of the gallery (Euclidean = cosine ranking); its gallery, the test records
    (their `data.image_domain` images of the run's `data.classes`)."""

    def gallery_domains(self) -> list[str]:
        """The record domains a gallery holds: the images sketches are matched with."""
        return [self.task.config.data.image_domain]

    def gallery_embed(self, models, records_dir: str, classes=None):
        """A batch {"image": preprocessed images float32 [B, S, S, 3], "image_key": int64 [B]}
        of `records_dir` -> {"image": embeddings [B, E]}, as evaluated: with
        `data.feature_cache` the image tower after the frozen part on the cached maps of the
        folder's images of `classes` (names; None: all; `FgSbirTask.gallery_caches`), else
        the whole image tower."""
        task = self.task
        if not task.uses_feature_cache():
            embed = _embedder(task, models, "image")
            return lambda b: {"image": embed(b["image"])}
        caches = task.gallery_caches(models, records_dir, classes)
        where = f"fg_sbir gallery {records_dir}"
        plain = caches["image"].lookup(where)
        flipped = caches["image_flip"].lookup(where) if "image_flip" in caches else None
        tower = fg_models.image_tower(models)
        multi, crop = bool(task.config.eval.multi_crop), task.crop_cells()

        def embed(b):
            maps = plain(b["image_key"])
            flips = None if flipped is None else flipped(b["image_key"])
            return fg_models.embed_images(
                tower, maps=maps, flipped_maps=flips, multi_crop=multi, crop_cells=crop
            )

        return lambda b: {"image": embed(b)}

    def index_vectors(self, embeddings: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        """Gallery embeddings -> (rows of a `GalleryIndex` float32 [N, E], its metric)."""
        return np.asarray(embeddings["image"], np.float32), METRIC

    def query_vectors(self, models, sketches, exemplars=None, alpha=None) -> np.ndarray:
        """Preprocessed sketches float32 [Q, S, S, 3] -> index query rows [Q, E].
        `exemplars` / `alpha` belong to style retrieval: refused here."""
        retrieval.refuse_style_inputs("fg_sbir", exemplars, alpha)
        embed = _embedder(self.task, models, "sketch")
        return embed(tf.convert_to_tensor(sketches, tf.float32)).numpy()


class FgSbirServing(retrieval.TaskBound):
    """The `Serving` of the fine-grained SBIR family: the signatures of the module docstring."""

    def signatures(self, models, gallery=None) -> dict[str, Any]:
        """The signatures above (name -> concrete function)."""
        task = self.task
        size = self.image_size()
        embedders = {role: _embedder(task, models, role) for role in ("sketch", "image")}
        sketch_roles = [role for role in embedders if task.is_drawing(role)]
        out = retrieval.embed_signatures(size, embedders, sketch_roles)
        if gallery is None:
            out["serving_default"] = out["embed_sketch"]
            return out
        width = int(fg_models.sketch_tower(models).output.shape[-1])
        out.update(retrieval.sketch_search_signatures(gallery, size, embedders["sketch"], width))
        return out

    def warmup_inputs(self, signatures=None) -> dict[str, dict[str, Any]]:
        """One request per signature on the shared example drawing; the export keeps those of
        the signatures it writes."""
        _, png, floats = retrieval.example_images(self.image_size())
        width = inputs.input_width(signatures, "search", "embedding")
        requests = {
            **retrieval.sketch_warmup_requests(png, floats),
            "embed_image": {"images": np.array([png], dtype=object)},
            "embed_image_floats": {"images": floats},
            "search": {
                "embedding": np.full((1, width), width**-0.5, np.float32),
                "k": np.int32(2),
            },
        }
        return retrieval.with_default_request(requests, signatures, "embed_sketch")
