"""Fine-grained SBIR towers: a sketch and an image of the *same object* map to nearby points.

A tower is image -> L2-normalised embedding, built on HED's pretrained VGG16 (`vgg16_hed`,
the edge-aware trunk installable here; or the same trunk with ImageNet weights, `vgg16` with
`weights_path="imagenet"`) in three parts:

    image [S, S, 3] in [0, 1]
      -> frozen part: HED blocks 1..`frozen_blocks` and the 2x2 max pool after them
         (the *split point*, layer `FEATURES_LAYER_NAME`: what the feature cache stores)
      -> tuned part: HED blocks `frozen_blocks + 1`..`trunk_blocks` (pretrained, trained),
         then the 2x2 max pool when `trunk_blocks` < 5, so the map has stride 16
      -> head: `feature_scale` x map -> [hidden 1x1 conv + ReLU]* -> 1x1 conv to
         `projection_dim` (linear) -> `GridMaxPool(grid)` -> flatten -> L2 normalisation

A tower is two nested models, `trunk_of(tower)` (image -> split-point map) and
`head_of(tower)` (map of any size -> embedding), ``tower(x) == head(trunk(x))``, so the CPU
recipe computes the frozen part once per image (`sketch_tf.data.cache`) and trains the rest;
`frozen_blocks=0` puts the split at the image itself and trains everything (the GPU recipe).

Why this head: a sketch and its object's image differ in every pixel but agree on *where*
each part of the object is. A linear 1x1 projection of HED's block-4 features keeps their
locality, and the max over a 4x4 grid of cells keeps the coarse layout a global pool throws
away (frozen block-4 features on a 4x4 grid, untrained, already retrieve QMUL shoes as well
as HOG; docs/fg_sbir.md). HED's activations are O(100): `feature_scale` brings them to O(1) so the
default initialisation and learning rate fit.

Augmentation and test-time views happen at the split point, the same in the cached and the
uncached path: `crop_maps` takes a window of the map (a crop of the image at a multiple of
the split point's stride, `split_stride`), and a horizontal flip is the map of the flipped
image. `embed_images` gives the evaluation and serving embedding: the whole map, or with
`multi_crop` the mean of 10 views (4 corner and centre windows, each also of the flipped
image) as in the original's test-time averaging.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from sketch_tf.models.backbones import BACKBONES, VGG16_TRUNKS, build_backbone
from sketch_tf.models.layers import GridMaxPool, L2Normalize

#: Name of the Identity layer that ends the frozen part (the cached map).
FEATURES_LAYER_NAME = "trunk_features"

__all__ = [
    "FEATURES_LAYER_NAME",
    "SPLIT_BACKBONE",
    "SPLIT_BACKBONES",
    "build_fg_sbir_models",
    "build_fg_tower",
    "crop_maps",
    "embed_images",
    "head_of",
    "image_tower",
    "map_cells",
    "sketch_tower",
    "split_stride",
    "trunk_of",
    "view_offsets",
]

#: Channels of HED's VGG16 blocks 1-5 (the split point's channels).
_BLOCK_CHANNELS = (64, 128, 256, 512, 512)
#: The backbone with a split point, a grid head and the feature cache (the default).
SPLIT_BACKBONE = "vgg16_hed"
#: Every backbone with that layout: the VGG16 trunk with HED's or ImageNet weights.
SPLIT_BACKBONES = VGG16_TRUNKS


def split_stride(frozen_blocks: int) -> int:
    """Pixels per cell of the map at the split point: 2 ** frozen_blocks (1: the image)."""
    return 2 ** int(frozen_blocks)


def map_cells(pixels: int, frozen_blocks: int) -> int:
    """Cells of the split-point map along a side of `pixels` (the pools round up)."""
    stride = split_stride(frozen_blocks)
    return -(-int(pixels) // stride)


def build_fg_tower(
    image_size: int = 256,
    *,
    trunk_blocks: int = 4,
    frozen_blocks: int = 4,
    projection_dim: int = 128,
    hidden: tuple[int, ...] = (),
    grid: int = 4,
    feature_scale: float = 0.01,
    weights_path: str | None = None,
    trunk: keras.Model | None = None,
    backbone: str = SPLIT_BACKBONE,
    backbone_kwargs: dict | None = None,
    name: str = "tower",
) -> keras.Model:
    """One fine-grained tower (see the module docstring).

    Another `backbones.BACKBONES` entry than `SPLIT_BACKBONES` gives the plain layout of the
    registry (as zs_sbir's towers): image -> backbone (its own pooling, [B, F]) -> Dense
    `projection_dim` -> L2 normalisation, all trained (`frozen_blocks` must be 0: the split
    point is the image, so training crops are image crops and must be `image_size`, the
    backbone's fixed input). `trunk_blocks`, `hidden`, `grid` and `feature_scale` are
    the split layout's.

    Args:
      image_size: S, the side of the input images (the map at the split point has
        `map_cells(S, frozen_blocks)` cells per side).
      trunk_blocks: last HED block used, 4 (default) or 5.
      frozen_blocks: HED blocks before the split point, 0..trunk_blocks; they are not
        trainable (0: nothing frozen, the split point is the image).
      projection_dim: channels of the 1x1 projection; the embedding has grid^2 x that many.
      hidden: widths of 1x1 conv + ReLU layers before the projection (() = none).
      grid: cells per side of the final max pool.
      feature_scale: multiplies the trunk's map before the head.
      weights_path: a local weights file of the VGG16 trunk (`build_vgg16_hed`), instead of
        the bundled HED weights, or "imagenet" with `backbone="vgg16"` (of the backbone,
        with another `backbone`).
      trunk: the frozen part of another tower built with the same arguments, used instead
        of a new one (two towers whose frozen parts are equal share one: half the memory,
        and one feature cache serves both).
      backbone: a `BACKBONES` name; `vgg16_hed` (default) and `vgg16` have the layout above.
      backbone_kwargs: extra arguments of another backbone's builder (e.g. `widths` of
        small_cnn, `weights_path`).
      name: model name.

    Returns:
      keras.Model float32 [B, S, S, 3] in [0, 1] -> float32 [B, grid^2 * projection_dim],
      unit rows.
    """
    if backbone not in SPLIT_BACKBONES:
        kwargs = dict(backbone_kwargs or {})
        if weights_path:
            kwargs["weights_path"] = weights_path
        return _registry_tower(
            int(image_size), backbone, kwargs, int(frozen_blocks), int(projection_dim), trunk,
            name,
        )  # fmt: skip
    trunk_blocks, frozen_blocks = int(trunk_blocks), int(frozen_blocks)
    if trunk_blocks not in (4, 5):
        raise ValueError(f"fg_sbir tower: trunk_blocks must be 4 or 5, got {trunk_blocks}")
    if not 0 <= frozen_blocks <= trunk_blocks:
        raise ValueError(
            f"fg_sbir tower: frozen_blocks must be in 0..trunk_blocks={trunk_blocks}, "
            f"got {frozen_blocks}"
        )
    if int(projection_dim) < 1 or int(grid) < 1 or any(int(w) < 1 for w in hidden):
        raise ValueError(
            f"fg_sbir tower: projection_dim, grid and hidden widths must be >= 1, got "
            f"{projection_dim}, {grid}, {tuple(hidden)}"
        )
    if map_cells(image_size, frozen_blocks) < 1 or int(image_size) < split_stride(trunk_blocks):
        raise ValueError(f"fg_sbir tower: image_size {image_size} is too small")
    hed = build_backbone(
        backbone,
        int(image_size),
        cut=f"block{trunk_blocks}",
        pooling="",
        freeze_blocks=frozen_blocks,
        weights_path=weights_path,
    )
    # The HED trunk is one chain of layers (pooling=""): re-applied here, split in two
    # models at the split point (after the pool that follows the last frozen block).
    chain = list(hed.layers[1:])
    if trunk_blocks < 5:
        chain.append(
            layers.MaxPooling2D(2, 2, padding="same", name=f"block{trunk_blocks + 1}_pool")
        )
    names = [layer.name for layer in chain]
    cut = 0 if frozen_blocks == 0 else names.index(f"block{frozen_blocks + 1}_pool") + 1
    if trunk is None:
        trunk_in = keras.Input((int(image_size), int(image_size), 3), name="image")
        x = trunk_in
        for layer in chain[:cut]:
            x = layer(x)
        trunk = keras.Model(
            trunk_in, layers.Identity(name=FEATURES_LAYER_NAME, dtype="float32")(x), name="trunk"
        )
    channels = 3 if frozen_blocks == 0 else _BLOCK_CHANNELS[frozen_blocks - 1]
    # Any map size: the head sees training crops and whole images.
    head_in = keras.Input((None, None, channels), name="features")
    x = head_in
    for layer in chain[cut:]:
        x = layer(x)
    x = layers.Rescaling(float(feature_scale), name="feature_scale")(x)
    for i, width in enumerate(hidden):
        x = layers.Conv2D(int(width), 1, activation="relu", name=f"head_hidden{i}")(x)
    x = layers.Conv2D(int(projection_dim), 1, name="projection")(x)
    x = GridMaxPool(int(grid), name="grid_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    head = keras.Model(head_in, L2Normalize(name="l2_normalize")(x), name="head")
    inp = keras.Input((int(image_size), int(image_size), 3), name="image")
    return keras.Model(inp, head(trunk(inp)), name=name)


def _image_trunk(image_size: int) -> keras.Model:
    """The empty frozen part of a tower whose split point is the image."""
    trunk_in = keras.Input((image_size, image_size, 3), name="image")
    return keras.Model(
        trunk_in, layers.Identity(name=FEATURES_LAYER_NAME, dtype="float32")(trunk_in), name="trunk"
    )


def _registry_tower(
    image_size: int,
    backbone: str,
    backbone_kwargs: dict,
    frozen_blocks: int,
    projection_dim: int,
    trunk: keras.Model | None,
    name: str,
) -> keras.Model:
    """image -> registry backbone -> Dense projection -> L2 (`build_fg_tower`, another backbone)."""
    if backbone not in BACKBONES:
        raise ValueError(
            f"fg_sbir tower: unknown backbone {backbone!r}; known: {sorted(BACKBONES)}"
        )
    if frozen_blocks != 0:
        raise ValueError(
            f"fg_sbir tower: frozen_blocks must be 0 with backbone {backbone!r} (only "
            f"{' / '.join(SPLIT_BACKBONES)} have a split point), got {frozen_blocks}"
        )
    if projection_dim < 1:
        raise ValueError(f"fg_sbir tower: projection_dim must be >= 1, got {projection_dim}")
    trunk = trunk if trunk is not None else _image_trunk(image_size)
    net = build_backbone(backbone, image_size, **backbone_kwargs)
    head_in = keras.Input((image_size, image_size, 3), name="features")
    x = layers.Dense(projection_dim, name="projection")(net(head_in))
    head = keras.Model(head_in, L2Normalize(name="l2_normalize")(x), name="head")
    inp = keras.Input((image_size, image_size, 3), name="image")
    return keras.Model(inp, head(trunk(inp)), name=name)


def build_fg_sbir_models(image_size: int = 256, *, shared: bool = False, **tower_kwargs):
    """{"sketch_tower", "image_tower"} (separate weights) or {"tower"} (`shared`), each
    `build_fg_tower(image_size, **tower_kwargs)`; use `sketch_tower(models)` /
    `image_tower(models)` to get them in either case. Separate towers share their frozen
    part when it holds weights (`frozen_blocks` > 0): it is the same pretrained network."""
    if shared:
        return {"tower": build_fg_tower(image_size, name="tower", **tower_kwargs)}
    sketch = build_fg_tower(image_size, name="sketch_tower", **tower_kwargs)
    shared_trunk = trunk_of(sketch) if int(tower_kwargs.get("frozen_blocks", 4)) > 0 else None
    image = build_fg_tower(image_size, name="image_tower", trunk=shared_trunk, **tower_kwargs)
    return {"sketch_tower": sketch, "image_tower": image}


def sketch_tower(models: dict) -> keras.Model:
    """The tower that embeds sketches (the shared one when weights are shared)."""
    return models["sketch_tower"] if "sketch_tower" in models else models["tower"]


def image_tower(models: dict) -> keras.Model:
    """The tower that embeds gallery images (edge maps or photos)."""
    return models["image_tower"] if "image_tower" in models else models["tower"]


def crop_maps(maps: tf.Tensor, offsets: tf.Tensor, cells: int) -> tf.Tensor:
    """A `cells` x `cells` window of each map, at its own offset.

    Args:
      maps: float [B, H, W, C] (split-point maps).
      offsets: int [B, 2] (row, column) of each window's top-left cell, with
        0 <= offset <= side - cells.
      cells: window side; `cells` >= H and W returns `maps` unchanged.

    Returns:
      float [B, cells, cells, C].
    """
    if maps.shape[1] is not None and cells >= maps.shape[1] and cells >= maps.shape[2]:
        return maps
    offsets = tf.cast(offsets, tf.int32)
    steps = tf.range(int(cells), dtype=tf.int32)
    rows = offsets[:, :1] + steps[None]  # [B, cells]
    cols = offsets[:, 1:] + steps[None]
    out = tf.gather(maps, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def view_offsets(full_cells: int, crop_cells: int) -> list[tuple[int, int]]:
    """(row, column) offsets of the test-time windows: the 4 corners, then the centre."""
    far = int(full_cells) - int(crop_cells)
    mid = far // 2
    return [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]


def embed_images(
    tower: keras.Model,
    images: tf.Tensor | None = None,
    *,
    maps: tf.Tensor | None = None,
    flipped_maps: tf.Tensor | None = None,
    multi_crop: bool = False,
    crop_cells: int = 0,
) -> tf.Tensor:
    """Evaluation / serving embeddings of a tower: unit rows float32 [B, E].

    Without `multi_crop`: the tower on the whole image (``tower(images)``, or its head on the
    split-point `maps`). With `multi_crop`: the mean of the head over the 5 `view_offsets`
    windows of `crop_cells` cells of the map and of the flipped image's map (10 views),
    renormalised.

    Args:
      tower: a `build_fg_tower` tower.
      images: float32 [B, S, S, 3] in [0, 1]; or instead
      maps, flipped_maps: the split-point maps of the images and of their mirror images
        ([B, H, W, C], e.g. from the feature cache; `flipped_maps` only with `multi_crop`).
      multi_crop: average the 10 views.
      crop_cells: window side in cells (the training crop), for `multi_crop`.
    """
    head = head_of(tower)
    if maps is None:
        trunk = trunk_of(tower)
        maps = trunk(images, training=False)
        if multi_crop:
            flipped_maps = trunk(tf.reverse(images, axis=[2]), training=False)
    if not multi_crop:
        return head(maps, training=False)
    full = int(maps.shape[1])
    views = []
    for m in (maps, flipped_maps):
        for offset in view_offsets(full, crop_cells):
            offsets = tf.tile(tf.constant([offset], tf.int32), [tf.shape(m)[0], 1])
            views.append(head(crop_maps(m, offsets, crop_cells), training=False))
    return tf.math.l2_normalize(tf.add_n(views) / float(len(views)), axis=-1)


def trunk_of(tower: keras.Model) -> keras.Model:
    """The frozen part: images float32 [B, S, S, 3] -> split-point maps [B, H, W, C]."""
    return tower.get_layer("trunk")


def head_of(tower: keras.Model) -> keras.Model:
    """The rest: split-point maps float32 [B, h, w, C] (any h, w) -> embeddings [B, E]."""
    return tower.get_layer("head")
