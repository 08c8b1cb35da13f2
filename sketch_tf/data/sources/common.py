"""Helpers shared by the dataset sources: image checks, bad-input policy, class ids, writing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from sketch_tf.data.images import encode_png
from sketch_tf.data.tfrecord import ShardedWriter

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
            return encode_png(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f"{path}: not a decodable image ({e})") from e


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

    def load_image(self, path, verify: bool = True) -> bytes | None:
        """`load_image_bytes(path, verify)`; for a bad image, None once `handle` has skipped it.

        Raises BadInputError naming the path when the image is bad and `skip_bad` is off.
        """
        try:
            return load_image_bytes(path, verify=verify)
        except BadInputError as e:
            self.handle(e, path)
            return None


def is_held_out(class_name: str, instance: str, fraction: float) -> bool:
    """The stable train / test split of the sources' `test_fraction`: True when the first 8
    bytes of sha256("<class>/<instance>") as a fraction of 2**64 fall below `fraction` (the
    same on every machine and Python version; all images of an instance go together)."""
    digest = hashlib.sha256(f"{class_name}/{instance}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < float(fraction)


class WriteOptions(NamedTuple):
    """Output options every source's `prepare` takes (see `ShardedWriter`, `BadInputPolicy`)."""

    skip_bad: bool
    shard_bytes: int
    group_by: str
    overwrite: bool


@contextlib.contextmanager
def open_dataset(
    out_dir, kind: str, classes: list[str], source: str, root, options: WriteOptions
) -> Iterator[tuple[ShardedWriter, BadInputPolicy]]:
    """`with` block writing one source's dataset: yields (writer, bad-input policy).

    `writer.info` starts with `source` (the source name) and `root` (as a string); callers add
    their own options to it. After the block, `writer.manifest` holds the manifest dict.
    """
    with ShardedWriter(
        out_dir,
        kind,
        shard_bytes=options.shard_bytes,
        classes=classes,
        group_by=options.group_by,
        overwrite=options.overwrite,
    ) as writer:
        writer.info.update(source=source, root=str(root))
        yield writer, BadInputPolicy(writer, options.skip_bad)
