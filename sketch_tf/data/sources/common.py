"""Helpers shared by the dataset sources: image checks, bad-input policy, class ids."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


class BadInputError(ValueError):
    """An input file (image, stroke record, table row) cannot be used; message names it."""


def load_image_bytes(path: str | os.PathLike, verify: bool = True) -> bytes:
    """Encoded PNG/JPEG bytes of an image file.

    PNG and JPEG files are kept byte for byte (after a full decode when `verify`, so a
    truncated file is caught here and not at training time); other formats (BMP, GIF, ...)
    are decoded and re-encoded as PNG.

    Raises:
      BadInputError naming the path when the file is unreadable, empty or not a decodable image.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInputError(f"{path}: cannot read ({e})") from e
    if not data:
        raise BadInputError(f"{path}: empty file")
    native = data.startswith(_PNG) or data.startswith(_JPEG)
    if native and not verify:
        return data
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if native:
                return data
            if im.mode not in ("L", "RGB", "RGBA", "LA"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f"{path}: not a decodable image ({e})") from e


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding of a PIL image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files ignored)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def subdirs(folder: Path) -> list[Path]:
    """Non-hidden sub-folders of `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_index(names) -> dict[str, int]:
    """Class name -> id, ids assigned in sorted name order (stable across runs)."""
    return {name: i for i, name in enumerate(sorted(set(names)))}


class BadInputPolicy:
    """Fail on the first bad input (default) or skip it and count it in the manifest."""

    def __init__(self, writer, skip_bad: bool):
        self.writer = writer
        self.skip_bad = skip_bad

    def handle(self, error: BadInputError, path) -> None:
        if not self.skip_bad:
            raise BadInputError(f"{error} (pass skip_bad=True / --skip_bad to skip it)") from error
        self.writer.skip(str(path), str(error))
