"""Image bytes the project writes and reads: the one PNG encoder (records, warmup requests,
tests) and the one reader of an image file given on a command line (`load_image`)."""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image


def encode_png(image) -> bytes:
    """PNG bytes of a uint8 array [H, W], [H, W, 3] or [H, W, 4], or of a PIL image.

    Deterministic (zlib level 6, no metadata): the same pixels always give the same bytes,
    which keeps synthetic records byte-identical for a seed.
    """
    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"encode_png: expected uint8 pixels, got {array.dtype}")
        image = Image.fromarray(array)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


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
