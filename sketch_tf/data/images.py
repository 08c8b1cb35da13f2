"""The one reader of an image file given on a command line (`load_image`). The one PNG
encoder (records, warmup requests, tests) is `sketch_tf.core.png.encode_png`."""

from __future__ import annotations

import os

import tensorflow as tf


def load_image(path: str | os.PathLike) -> bytes:
    """The encoded bytes of the image file `path` (PNG / JPEG / GIF / BMP), checked to decode.

    Raises:
      ValueError naming the file when it is missing or does not decode.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"{path}: not a PNG / JPEG / GIF / BMP image ({err.message})") from err
    return data
