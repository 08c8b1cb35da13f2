"""Style-aware SBIR models: a structure branch (what is drawn) and a style branch (how).

- Structure branch: a sketch tower and an image tower (`towers.build_tower`, on any backbone
  of the registry incl. the pretrained `vgg16_hed`; separate weights, or one shared tower),
  L2-normalised embeddings trained with a triplet loss so that a sketch lands near the
  artistic images of its content whatever their depiction style.
- Style branch: one tower applied to the anchor, positive and negative images (the siamese
  network of the original, three weight-sharing branches = one model called three times).
  Its default trunk is the frozen `vgg16_hed` cut at an early block with `mean_std` pooling
  (the per-channel feature statistics of style transfer), then an MLP head.
- `style_classifier`: Dense over the content x style classes on the style embedding (stage 1
  of the recipe: ``label = content * num_styles + style``).

Retrieval score of a query (sketch q, exemplar x) against an image g:

    score = alpha * cos(structure(q), structure(g)) + (1 - alpha) * cos(style(x), style(g))

with `alpha` in [0, 1] chosen at query time (`combined_scores`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

from sketch_tf.models.towers import build_tower

__all__ = [
    "STRUCTURE_MODELS",
    "build_style_models",
    "check_alpha",
    "combined_scores",
    "structure_image_tower",
    "structure_sketch_tower",
]

#: Model names of the structure branch (separate towers; shared: "structure_tower").
STRUCTURE_MODELS = ("structure_sketch", "structure_image")


def build_style_models(
    image_size: int,
    num_contents: int,
    num_styles: int,
    *,
    structure: dict[str, Any],
    style: dict[str, Any],
    shared_structure: bool = False,
) -> dict[str, keras.Model]:
    """All models of the family.

    Args:
      image_size: input side S of every tower (float32 [B, S, S, 3] in [0, 1]).
      num_contents, num_styles: class counts of the stage-1 classifier (C x S outputs).
      structure: `build_tower` arguments of the structure towers (backbone, projection_dim,
        head_hidden, backbone_kwargs, freeze_trunk, ...); embeddings are L2-normalised.
      style: `build_tower` arguments of the style tower; L2-normalised too.
      shared_structure: one structure tower for sketches and images.

    Returns:
      {"structure_sketch", "structure_image"} (or {"structure_tower"} when shared),
      "style_tower" ([B, S, S, 3] -> [B, E_style]) and "style_classifier" ([B, E_style] ->
      [B, C * S] logits).
    """
    if num_contents < 2 or num_styles < 2:
        raise ValueError(
            f"style models need >= 2 content and >= 2 style classes, got {num_contents} and "
            f"{num_styles}"
        )
    structure = dict(structure)
    backbone = structure.pop("backbone")
    models = {}
    if shared_structure:
        models["structure_tower"] = build_tower(
            backbone, image_size, normalize=True, name="structure_tower", **structure
        )
    else:
        for name in STRUCTURE_MODELS:
            models[name] = build_tower(backbone, image_size, normalize=True, name=name, **structure)
    style = dict(style)
    models["style_tower"] = build_tower(
        style.pop("backbone"), image_size, normalize=True, name="style_tower", **style
    )
    dim = int(models["style_tower"].output.shape[-1])
    inp = keras.Input((dim,), name="style_embedding")
    # float32 logits under every precision policy: the softmax cross-entropy is computed
    # from them.
    logits = layers.Dense(num_contents * num_styles, name="content_style_logits", dtype="float32")(
        inp
    )
    models["style_classifier"] = keras.Model(inp, logits, name="style_classifier")
    return models


def structure_sketch_tower(models: dict[str, keras.Model]) -> keras.Model:
    """The tower embedding sketches (the shared one when the structure branch is shared)."""
    return models.get("structure_tower") or models["structure_sketch"]


def structure_image_tower(models: dict[str, keras.Model]) -> keras.Model:
    """The tower embedding gallery images (the shared one when shared)."""
    return models.get("structure_tower") or models["structure_image"]


def check_alpha(alpha: float, where: str = "alpha") -> float:
    """`alpha` as a float, or ValueError naming `where` when it is not a number in [0, 1]."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{where} must be in [0, 1], got {alpha!r}")
    return value


def combined_scores(structure_sim, style_sim, alpha: float) -> np.ndarray:
    """``alpha * structure_sim + (1 - alpha) * style_sim``, float64 [Q, N].

    Args:
      structure_sim: [Q, N] similarity of each query's sketch to each gallery image.
      style_sim: [Q, N] similarity of each query's exemplar to each gallery image.
      alpha: weight of the structure term, in [0, 1] (1 = sketch only, 0 = style only).
    """
    a = check_alpha(alpha)
    s1, s2 = np.asarray(structure_sim, np.float64), np.asarray(style_sim, np.float64)
    if s1.shape != s2.shape or s1.ndim != 2:
        raise ValueError(f"structure_sim {s1.shape} and style_sim {s2.shape}: expected [Q, N]")
    return a * s1 + (1.0 - a) * s2
