"""SavedModel signatures of the style-aware SBIR family, its serving gallery and warmup inputs.

Every image signature comes twice (`sketch_tf.export.inputs.with_float_variant`): images as
encoded bytes tf.string [N] (PNG / JPEG, any size), and in `<name>_floats` as float32
[N, H, W, 3] in [0, 1] of any size, under the same input names.

Embeddings (each L2-normalised by the towers' last layer or not, as trained):

- `embed_structure_sketch` (+ `_floats`): sketches `images` -> `embedding` [N, E];
- `embed_structure_image` (+ `_floats`): gallery images -> `embedding` [N, E] (structure space);
- `embed_style` (+ `_floats`): exemplars or gallery images -> `embedding` [N, F] (style space).

Scoring and retrieval (alpha chosen per request; an alpha outside [0, 1] is InvalidArgument
naming it). Score of gallery image g for sketch s and exemplar x, as evaluation ranks:
alpha * cos(structure(s), structure(g)) + (1 - alpha) * cos(style(x), style(g)).

- `score` (+ `_floats`): `sketches` [Q] + `exemplars` [Q], `gallery_structure` float32
  [N, E] and `gallery_style` [N, F] (a gallery's `embed_structure_image` / `embed_style`
  outputs), `alpha` float32 scalar -> `scores` [Q, N].
- `retrieve` (+ `_floats`), with a gallery (`export.py --gallery=RECORDS`: every image of
  the style domains, embedded at export time): `sketches` [Q], `exemplars` [Q], `alpha`, `k`
  int32 -> exact top-k: `keys` string [Q, k'], `labels` string [Q, k'] (class names), `ids`
  int64 [Q, k'], `scores` float32 [Q, k'], `k` int32 (k' = min(k, gallery size)), `clipped`.
- `search` (with a gallery): `structure` float32 [Q, E], `style` [Q, F] (query embeddings),
  `alpha`, `k` -> the outputs of `retrieve`.
- `serving_default` = `retrieve` with a gallery, else `embed_structure_sketch`.

The search is one inner product with the gallery rows [unit structure, unit style] and the
query [alpha unit structure, (1 - alpha) unit style], the weighted sum above exactly.
Images go through the serving input layer (`sketch_tf.export.inputs`) exactly as evaluation
preprocesses records: sketches keep their aspect with white padding, images are resized and
centre-cropped to `data.image_size`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.core.png import encode_png
from sketch_tf.export import gallery as gallery_lib
from sketch_tf.export import inputs
from sketch_tf.families import retrieval

_ALPHA = tf.TensorSpec([], tf.float32, name="alpha")
_K = retrieval.K_SPEC
_unit = gallery_lib.unit_rows


def _checked_alpha(alpha):
    ok = tf.logical_and(alpha >= 0.0, alpha <= 1.0)  # False for NaN too
    check = tf.debugging.Assert(ok, ["input `alpha`: expected a number in [0, 1], got", alpha])
    with tf.control_dependencies([check]):
        return tf.identity(alpha)


def _query(structure, style, alpha):
    """[alpha unit structure, (1 - alpha) unit style]: its inner product with a gallery row
    [unit structure, unit style] is the weighted score of the module docstring."""
    alpha = _checked_alpha(alpha)
    return tf.concat([alpha * _unit(structure), (1.0 - alpha) * _unit(style)], 1)


class StyleSbirRetrieval(retrieval.TestGalleryRetrieval):
    """The `Retrieval` of the style-aware SBIR family: sketch + exemplar queries against
    gallery rows [unit structure, unit style] (see `_query`); its gallery, the test records
    (their images of every style domain, of the run's `data.classes`)."""

    def gallery_domains(self) -> list[str]:
        """The record domains a gallery holds: every style domain."""
        return list(self.task.styles())

    def gallery_embed(self, models, records_dir: str, classes=None):
        """A batch {"image": preprocessed images float32 [B, S, S, 3], "image_key": int64 [B]}
        of `records_dir` -> {"structure": [B, E], "style": [B, F]} embeddings: the heads on the
        cached trunk features of the folder's images of `classes` (names; None: all) with
        `data.feature_cache` (`StyleSbirTask.gallery_caches`), else the towers."""
        task = self.task
        spaces = {"structure": "structure_image", "style": "style"}
        if not task.uses_feature_cache():
            towers = task.towers(models)
            return lambda b: {
                space: towers[role](b["image"], training=False) for space, role in spaces.items()
            }
        caches = task.gallery_caches(models, records_dir, classes)
        lookups = {r: caches[r].lookup(f"style_sbir gallery {records_dir} ({r})") for r in caches}
        heads = task.heads(models)
        return lambda b: {
            space: heads[role](lookups[role](b["image_key"]), training=False)
            for space, role in spaces.items()
        }

    def index_vectors(self, embeddings: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        """Gallery embeddings -> (`GalleryIndex` rows [N, E + F] = [unit structure, unit
        style], "inner_product"); see `_query` for the matching query rows."""
        rows = tf.concat([_unit(embeddings["structure"]), _unit(embeddings["style"])], 1)
        return rows.numpy(), "inner_product"

    def query_vectors(self, models, sketches, exemplars=None, alpha=None) -> np.ndarray:
        """Preprocessed sketches and exemplars float32 [Q, S, S, 3] and alpha in [0, 1] ->
        index query rows [Q, E + F] (`index_vectors`' space)."""
        if exemplars is None or alpha is None:
            raise ValueError(
                "style_sbir retrieval needs an exemplar and alpha (--exemplar, --alpha)"
            )
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"--alpha: expected a number in [0, 1], got {alpha}")
        towers = self.task.towers(models)
        k = towers["structure_sketch"](sketches, training=False)
        x = towers["style"](exemplars, training=False)
        return query_vectors_from_embeddings(k, x, alpha)


def query_vectors_from_embeddings(structure, style, alpha: float) -> np.ndarray:
    """Query embeddings (structure of the sketch [Q, E], style of the exemplar [Q, F]) ->
    index query rows [Q, E + F] for `index_vectors`' gallery rows."""
    return _query(structure, style, tf.constant(float(alpha))).numpy()


class StyleSbirServing(retrieval.TaskBound):
    """The `Serving` of the style-aware SBIR family: the signatures of the module docstring."""

    def signatures(self, models, gallery=None) -> dict[str, Any]:
        """The signatures above (name -> concrete function)."""
        task = self.task
        size = self.image_size()
        towers = task.towers(models)
        embedders = {
            role: (lambda x, tower=towers[role]: tower(x, training=False))
            for role in ("structure_sketch", "structure_image", "style")
        }
        out = retrieval.embed_signatures(size, embedders, ["structure_sketch"])
        sketch_tower, style_tower = towers["structure_sketch"], towers["style"]
        sketch_prep = inputs.prepare_batch(size, True)
        image_prep = inputs.prepare_batch(size, False)

        def prepare(value, name, from_bytes):
            return (sketch_prep if name == "sketches" else image_prep)(value, name, from_bytes)

        def embed_queries(x):
            return (
                sketch_tower(x["sketches"], training=False),
                style_tower(x["exemplars"], training=False),
            )

        def score(x, extra):
            alpha = _checked_alpha(extra["alpha"])
            k, s = embed_queries(x)
            structure = tf.matmul(_unit(k), _unit(extra["gallery_structure"]), transpose_b=True)
            style = tf.matmul(_unit(s), _unit(extra["gallery_style"]), transpose_b=True)
            return {"scores": alpha * structure + (1.0 - alpha) * style}

        gallery_specs = [
            tf.TensorSpec([None, None], tf.float32, name="gallery_structure"),
            tf.TensorSpec([None, None], tf.float32, name="gallery_style"),
        ]
        images = ["sketches", "exemplars"]
        out.update(
            inputs.with_float_variant("score", score, images, [*gallery_specs, _ALPHA], prepare)
        )
        if gallery is None:
            out["serving_default"] = out["embed_structure_sketch"]
            return out

        def retrieve(x, extra):
            k, s = embed_queries(x)
            return gallery.top_k(_query(k, s, extra["alpha"]), extra["k"])

        out.update(inputs.with_float_variant("retrieve", retrieve, images, [_ALPHA, _K], prepare))
        e_dim, f_dim = int(sketch_tower.output.shape[-1]), int(style_tower.output.shape[-1])

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, e_dim], tf.float32, name="structure"),
                tf.TensorSpec([None, f_dim], tf.float32, name="style"),
                _ALPHA,
                _K,
            ]
        )
        def search(structure, style, alpha, k):
            return gallery.top_k(_query(structure, style, alpha), k)

        out["search"] = search.get_concrete_function()
        out["serving_default"] = out["retrieve"]
        return out

    def warmup_inputs(self, signatures=None) -> dict[str, dict[str, Any]]:
        """One request per signature on the shared example drawing (a coloured copy as image);
        the export keeps those of the signatures it writes."""
        img, png, floats = retrieval.example_images(self.image_size())
        colour = img.copy()
        colour[img[..., 0] == 255] = (240, 200, 120)  # a coloured background: a "styled" image
        colour_png = encode_png(colour)
        colour_floats = colour[None].astype(np.float32) / 255.0
        e_dim = inputs.input_width(signatures, "search", "structure")
        f_dim = inputs.input_width(signatures, "search", "style")
        pair = {
            "sketches": np.array([png], dtype=object),
            "exemplars": np.array([colour_png], dtype=object),
        }
        pair_floats = {"sketches": floats, "exemplars": colour_floats}
        gallery = {
            "gallery_structure": np.ones((3, e_dim), np.float32),
            "gallery_style": np.ones((3, f_dim), np.float32),
            "alpha": np.float32(0.5),
        }
        query = {"alpha": np.float32(0.7), "k": np.int32(3)}
        requests = {
            "embed_structure_sketch": {"images": np.array([png, png], dtype=object)},
            "embed_structure_image": {"images": np.array([colour_png], dtype=object)},
            "embed_style": {"images": np.array([colour_png], dtype=object)},
            "embed_structure_sketch_floats": {"images": floats},
            "embed_structure_image_floats": {"images": colour_floats},
            "embed_style_floats": {"images": colour_floats},
            "score": {**pair, **gallery},
            "score_floats": {**pair_floats, **gallery},
            "retrieve": {**pair, **query},
            "retrieve_floats": {**pair_floats, **query},
            "search": {
                "structure": np.ones((1, e_dim), np.float32),
                "style": np.ones((1, f_dim), np.float32),
                **query,
            },
        }
        return retrieval.with_default_request(requests, signatures, "embed_structure_sketch")
