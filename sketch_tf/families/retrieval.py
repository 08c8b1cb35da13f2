"""What the serving modules of the retrieval families (fg_sbir, zs_sbir, style_sbir) share:
the test-records default gallery of their `Retrieval` (of the run's `data.classes`), the
refusal of style inputs by the sketch-only families, the `embed_<role>` signatures, the
sketch `retrieve` / `search` signatures and their warmup requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.core.png import encode_png
from sketch_tf.export import inputs

#: The `k` input of `retrieve` / `search`: how many gallery rows to return, int32 scalar.
K_SPEC = tf.TensorSpec([], tf.int32, name="k")


@dataclasses.dataclass
class TaskBound:
    """Base of a family's `Serving` and `Retrieval`: the family Task they work for."""

    task: Any  # the family's Task

    def image_size(self) -> int:
        """`data.image_size` of the task's config: the side (px) of the model inputs."""
        return int(self.task.config.data.image_size)


class TestGalleryRetrieval(TaskBound):
    """Base of a family `Retrieval` whose default gallery is the run's test records, of the
    classes the run was restricted to (`data.classes`), as evaluated."""

    def gallery_records(self) -> str:
        """The test records (`Task.records_dir("test")`)."""
        return self.task.records_dir("test")

    def gallery_classes(self) -> tuple[str, ...] | None:
        """`data.classes` of the task's config when it names some (the run trained and was
        evaluated on those classes only), else None (every class; also for a config without
        `data.classes`, e.g. zs_sbir's, whose unseen-class evaluation restricts its queries
        and gallery but not its data)."""
        classes = tuple(self.task.config.data.get("classes", ()) or ())
        return classes or None


def refuse_style_inputs(family: str, exemplars, alpha) -> None:
    """ValueError when a sketch-only family's retrieval is given an exemplar or an alpha
    (they belong to style retrieval)."""
    if exemplars is not None or alpha is not None:
        raise ValueError(f"{family} retrieval takes a sketch only (no --exemplar / --alpha)")


def embed_signatures(
    size: int, embedders: dict[str, Callable], sketch_roles: Collection[str]
) -> dict[str, Any]:
    """`embed_<role>` (+ `_floats`) for each role: `images` -> `embedding` =
    `embedders[role](images)`, images prepared at `size` px as drawings for `sketch_roles`
    (white padding) and as photos otherwise (centre crop)."""
    out = {}
    for role, embed in embedders.items():
        out.update(
            inputs.with_float_variant(
                f"embed_{role}",
                lambda x, _, embed=embed: {"embedding": embed(x["images"])},
                ["images"],
                [],
                inputs.prepare_batch(size, is_sketch=role in sketch_roles),
            )
        )
    return out


def sketch_search_signatures(
    gallery, size: int, embed_sketch: Callable, width: int, to_query: Callable = lambda e: e
) -> dict[str, Any]:
    """`retrieve` (+ `_floats`: `images` [Q] sketches + `k` -> `gallery.top_k` of their
    query rows), `search` (`embedding` float32 [Q, width] + `k` -> the same) and
    `serving_default` = `retrieve`. `to_query` maps sketch embeddings [Q, width] to the
    gallery's query rows."""
    out = inputs.with_float_variant(
        "retrieve",
        lambda x, extra: gallery.top_k(to_query(embed_sketch(x["images"])), extra["k"]),
        ["images"],
        [K_SPEC],
        inputs.prepare_batch(size, is_sketch=True),
    )

    @tf.function(
        input_signature=[tf.TensorSpec([None, width], tf.float32, name="embedding"), K_SPEC]
    )
    def search(embedding, k):
        return gallery.top_k(to_query(embedding), k)

    out["search"] = search.get_concrete_function()
    out["serving_default"] = out["retrieve"]
    return out


def example_images(size: int) -> tuple[np.ndarray, bytes, np.ndarray]:
    """The shared example drawing for warmup requests: (uint8 [size, size, 3], its PNG bytes,
    float32 [1, size, size, 3] in [0, 1])."""
    img = inputs.example_drawing(size)
    return img, encode_png(img), img[None].astype(np.float32) / 255.0


def sketch_warmup_requests(png: bytes, floats: np.ndarray) -> dict[str, dict[str, Any]]:
    """Warmup requests of `embed_sketch` and `retrieve` (+ `_floats`) on one example sketch."""
    sketches = np.array([png, png], dtype=object)
    return {
        "embed_sketch": {"images": sketches},
        "embed_sketch_floats": {"images": floats},
        "retrieve": {"images": sketches, "k": np.int32(3)},
        "retrieve_floats": {"images": floats, "k": np.int32(3)},
    }


def with_default_request(requests: dict, signatures, fallback: str) -> dict:
    """`requests` with `serving_default` = the `retrieve` request when the export writes a
    `retrieve` signature, else the `fallback` one."""
    has_retrieve = signatures is not None and "retrieve" in signatures
    requests["serving_default"] = requests["retrieve" if has_retrieve else fallback]
    return requests
