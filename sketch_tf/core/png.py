"""Deterministic PNG encoding, free of TensorFlow (the synthetic world's render processes
import it without paying for TensorFlow's import)."""

from __future__ import annotations

import io

import numpy as np
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
