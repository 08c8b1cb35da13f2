"""Helpers shared by the dataset sources: image checks, bad-input policy, class ids, writing.

A source that also runs on Apache Beam (`sketch_tf.data.beam`) describes its conversion as a
`SourcePlan`: picklable work `units` (files, images), the `items` each unit holds, and
`convert(item)`, one item -> one serialized record. `write_plan` is the single-process writer
of a plan; the Beam pipeline calls the same `items` / `convert`, so both paths write the same
records.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError

from sketch_tf.core.png import encode_png
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
    except UnidentifiedImageError as e:
        # PIL's message names the in-memory file object (`<_io.BytesIO object at 0x...>`),
        # which would make the manifest's skip reasons differ from run to run.
        raise BadInputError(f"{path}: not a decodable image (unknown image format)") from e
    except (OSError, SyntaxError, ValueError) as e:
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


class Converted(NamedTuple):
    """One converted input: its serialized record and what the manifest counts it as."""

    record: bytes
    class_id: int
    class_name: str
    domain: str


class SourcePlan:
    """What a source converts, computed (and validated) before any record is written.

    A plan is a picklable value (Beam ships it to its workers). Subclasses set the attributes
    and implement `units`, `items`, `convert` and `info`.

    Attributes:
      source: source name (manifest `info.source`).
      kind: record kind written (`schema.KINDS`).
      root: dataset root (manifest `info.root`).
      classes: full class list, index = class_id.
      parts: dataset parts written: `("",)` for one dataset in `out_dir`, else sub-folder
        names such as `("train", "test")`.

    Every item has the attributes `order` (tuple of ints: the single-process conversion visits
    items in increasing `order`), `part` (one of `parts`) and `where` (the input named by an
    error, and listed in the manifest when skipped).
    """

    source: str
    kind: str
    root: Path
    classes: list[str]
    parts: tuple[str, ...] = ("",)

    def units(self) -> list[Any]:
        """Picklable work units (a file, an image), in single-process order."""
        raise NotImplementedError

    def items(self, unit) -> Iterable[Any]:
        """The items of one unit, in order.

        Raises:
          BadInputError / ValueError / OSError when the unit itself cannot be read (not
          skippable: the run fails).
        """
        raise NotImplementedError

    def convert(self, item) -> Converted:
        """One item -> its record.

        Raises:
          BadInputError naming the input when it is unusable (skipped with `skip_bad`);
          ValueError for anything else wrong (the run fails).
        """
        raise NotImplementedError

    def info(self, part: str) -> dict:
        """Source options recorded in the manifest's `info` after `source` and `root`."""
        raise NotImplementedError


def split_options(
    default_group_by: str,
    *,
    skip_bad: bool = False,
    shard_bytes: int = 128 << 20,
    group_by: str | None = None,
    overwrite: bool = False,
    **plan_options,
) -> tuple[WriteOptions, dict]:
    """A planned source's `prepare` options -> (its output options, its `plan` options).

    Args:
      default_group_by: the source's `group_by` when none is given.
      skip_bad: skip unreadable / malformed inputs (recorded in the manifest) instead of
        failing.
      shard_bytes, group_by, overwrite: the output options (`WriteOptions`).
      **plan_options: the source's own options (see its `plan`).
    """
    write_options = WriteOptions(skip_bad, shard_bytes, group_by or default_group_by, overwrite)
    return write_options, plan_options


def plan_and_write(
    plan_fn: Callable[..., SourcePlan], root, out_dir, default_group_by: str, **options
) -> dict:
    """The `prepare` of a source split into a plan: `write_plan(plan_fn(root, ...))`.

    Args:
      plan_fn: the source's `plan(root, **plan_options)`.
      root: the dataset's file or folder; out_dir: the output dataset folder (written
        atomically).
      default_group_by: the source's `group_by` when none is given.
      **options: output and plan options (`split_options`).

    Returns:
      the manifest dict; with several parts, {part: manifest}.
    """
    write_options, plan_options = split_options(default_group_by, **options)
    return write_plan(plan_fn(root, **plan_options), out_dir, write_options)


def write_plan(plan: SourcePlan, out_dir, options: WriteOptions) -> dict:
    """Single-process conversion of `plan` into `out_dir` (one `ShardedWriter` per part).

    Returns:
      the manifest dict; with several parts, {part: manifest}.

    Raises:
      BadInputError naming the input on the first bad item when `options.skip_bad` is off.
    """
    manifests = {}
    for part in plan.parts:
        target = os.path.join(out_dir, part) if part else out_dir
        with open_dataset(target, plan.kind, plan.classes, plan.source, plan.root, options) as (
            writer,
            policy,
        ):
            for unit in plan.units():
                for item in plan.items(unit):
                    if item.part != part:
                        continue
                    try:
                        converted = plan.convert(item)
                    except BadInputError as e:
                        policy.handle(e, item.where)
                        continue
                    writer.write(
                        converted.record,
                        class_id=converted.class_id,
                        class_name=converted.class_name,
                        domain=converted.domain,
                    )
            writer.info.update(plan.info(part))
        manifests[part] = writer.manifest
    return manifests[""] if "" in manifests else manifests
