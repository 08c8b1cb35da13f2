"""The serving input layer: encoded images or float tensors -> model inputs, for every family.

Exported signatures take images either as encoded bytes (`tf.string`: PNG / JPEG / GIF /
BMP, any size, grey / RGB / RGBA) or as float32 tensors in [0, 1] of any size; both are turned
into model inputs exactly as evaluation turns records into them (`sketch_tf.data.pipeline`:
`decode_image`, then `resize_keep_aspect` with white padding for drawings, `resize_crop`
for photos, or `resize_pad_geometry` when points must be mapped too). Bad input raises
`InvalidArgumentError` naming the signature input ("input `images`: ...") instead of
crashing the server. `example_drawing` is the one warmup picture of every family.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sketch_tf.core import autograph  # noqa: F401  (traced as written: core/autograph.py)
from sketch_tf.data import pipeline

#: Leading bytes of the formats `tf.io.decode_image` reads.
_PNG = b"\x89PNG\r\n\x1a\n"
_MAGIC = (_PNG, b"\xff\xd8\xff", b"GIF8", b"BM")
#: Every complete PNG ends with its IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_image_bytes(encoded: tf.Tensor, name: str) -> tf.Tensor:
    """Asserts that scalar string `encoded` starts like a PNG / JPEG / GIF / BMP file and,
    for a PNG, is complete (ends with its IEND chunk: not a truncated upload).

    Returns `encoded` (with the check as a control dependency). Raises InvalidArgumentError
    "input `<name>`: expected complete PNG/JPEG image bytes" at run time otherwise. Damage inside a
    file that passes these checks is still an InvalidArgumentError, from the decoder.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    known = tf.reduce_any([tf.strings.substr(encoded, 0, len(m)) == m for m in _MAGIC])
    n = tf.strings.length(encoded)
    is_png = tf.strings.substr(encoded, 0, len(_PNG)) == _PNG
    tail = tf.strings.substr(encoded, tf.maximum(n - len(_PNG_END), 0), len(_PNG_END))
    ok = tf.logical_and(known, tf.logical_or(tf.logical_not(is_png), tail == _PNG_END))
    check = tf.debugging.Assert(
        ok,
        # The byte count, not the bytes: binary data does not fit an error message.
        [f"input `{name}`: expected complete PNG/JPEG image bytes, got a string of", n, "bytes"],
    )
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def decode(encoded: tf.Tensor, name: str, max_side: int | None = None) -> tf.Tensor:
    """Scalar encoded image -> float32 [H, W, 3] in [0, 1] (`pipeline.decode_image`, huge
    images box-averaged to `max_side` as `pipeline.preprocess` does)."""
    return pipeline.decode_image(check_image_bytes(encoded, name), max_side=max_side)


def check_float_images(images: tf.Tensor, name: str) -> tf.Tensor:
    """Asserts float images [N, H, W, 3] (or [H, W, 3]) are finite and within [0, 1]."""
    images = tf.convert_to_tensor(images, tf.float32)
    ok = tf.logical_and(
        tf.reduce_all(tf.math.is_finite(images)),
        tf.logical_and(tf.reduce_all(images >= 0.0), tf.reduce_all(images <= 1.0)),
    )
    check = tf.debugging.Assert(ok, [f"input `{name}`: expected float pixels in [0, 1]"])
    with tf.control_dependencies([check]):
        return tf.identity(images)


def fit(image: tf.Tensor, is_sketch: bool, size: int) -> tf.Tensor:
    """float [H, W, 3] -> [size, size, 3] as evaluation does: drawings keep their aspect
    with white padding, photos are resized and centre-cropped."""
    if is_sketch:
        return pipeline.resize_keep_aspect(image, size, 1.0)
    return pipeline.resize_crop(image, size)


def images_from_bytes(images: tf.Tensor, name: str, size: int, is_sketch: bool) -> tf.Tensor:
    """[N] encoded images -> float32 [N, size, size, 3] model inputs."""
    return tf.map_fn(
        lambda x: fit(decode(x, name, pipeline.MAX_SIDE_FACTOR * size), is_sketch, size),
        images,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
    )


def images_from_floats(images: tf.Tensor, name: str, size: int, is_sketch: bool) -> tf.Tensor:
    """float32 [N, H, W, 3] in [0, 1] (any H, W) -> [N, size, size, 3] model inputs."""
    images = check_float_images(images, name)
    return tf.map_fn(
        lambda x: fit(x, is_sketch, size),
        images,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
    )


def drawing_with_geometry(encoded: tf.Tensor, name: str, size: int):
    """Scalar encoded drawing -> (image [size, size, 3], scale [2], offset [2]): a point p of
    the input image lands at p * scale + offset (`pipeline.resize_pad_geometry`)."""
    return pipeline.resize_pad_geometry(decode(encoded, name), size, 1.0)


def example_drawing(size: int = 96) -> np.ndarray:
    """uint8 [size, size, 3]: a white canvas with a black square outline (2 px) and its
    diagonal; the warmup / example input of every family's signatures."""
    img = np.full((size, size, 3), 255, np.uint8)
    a, b = size // 6, size - size // 6
    img[a : a + 2, a:b] = 0
    img[b - 2 : b, a:b] = 0
    img[a:b, a : a + 2] = 0
    img[a:b, b - 2 : b] = 0
    for t in range(a, b):
        img[t, t : t + 2] = 0
    return img


def prepare_batch(size: int, is_sketch: bool):
    """`prepare` for `with_float_variant`: [N] encoded or float [N, H, W, 3] images ->
    [N, size, size, 3] model inputs (drawings padded, photos centre-cropped)."""

    def prepare(value, name, from_bytes):
        if from_bytes:
            return images_from_bytes(value, name, size, is_sketch)
        return images_from_floats(value, name, size, is_sketch)

    return prepare


def prepare_drawing_geometry(size: int):
    """`prepare` for `with_float_variant` of one drawing: scalar encoded or float [H, W, 3]
    -> (image [size, size, 3], scale [2], offset [2]) (`drawing_with_geometry`)."""

    def prepare(value, name, from_bytes):
        if from_bytes:
            return drawing_with_geometry(value, name, size)
        return pipeline.resize_pad_geometry(check_float_images(value, name), size, 1.0)

    return prepare


def with_float_variant(
    name: str,
    body,
    image_inputs: list[str],
    extra_specs: list[tf.TensorSpec],
    prepare,
    batched: bool = True,
) -> dict:
    """The two signatures of one computation: `name` takes encoded images (tf.string [N], or
    a scalar with `batched=False`) and `<name>_floats` float32 [N, H, W, 3] (or [H, W, 3]) in
    [0, 1] of any size, under the same input names.

    Args:
      body: (prepared: {image input: prepare(...)}, extra: {spec name: tensor}) -> outputs.
      image_inputs: names of the image inputs, in signature order, before `extra_specs`.
      prepare: (value, input name, from_bytes) -> the model-side value of one image input.

    Returns:
      {name: concrete function, f"{name}_floats": concrete function}.
    """
    shapes = {True: [None] if batched else [], False: [None, None, None, 3][1 - batched :]}
    out = {}
    for suffix, from_bytes in (("", True), ("_floats", False)):
        dtype = tf.string if from_bytes else tf.float32
        specs = [tf.TensorSpec(shapes[from_bytes], dtype, name=n) for n in image_inputs]

        def make(from_bytes, label):
            def run(*args):
                n_img = len(image_inputs)
                prepared = {
                    n: prepare(a, n, from_bytes)
                    for n, a in zip(image_inputs, args[:n_img], strict=True)
                }
                extra = {s.name: a for s, a in zip(extra_specs, args[n_img:], strict=True)}
                return body(prepared, extra)

            run.__name__ = label
            return run

        fn = tf.function(
            make(from_bytes, f"{name}{suffix}"), input_signature=specs + list(extra_specs)
        )
        out[f"{name}{suffix}"] = fn.get_concrete_function()
    return out


def input_width(signatures: dict, signature: str, name: str, default: int = 8) -> int:
    """The static last dimension of input `name` of `signature` (for warmup requests), or
    `default` when the signature is absent or the dimension unknown."""
    if signatures is None or signature not in signatures:
        return default
    args, kwargs = signatures[signature].structured_input_signature
    specs = {s.name: s for s in tf.nest.flatten((args, kwargs))}
    specs.update(kwargs)  # a reloaded signature: keyword inputs
    spec = specs.get(name)
    dim = None if spec is None else spec.shape[-1]
    return default if dim is None else int(dim)
