"""Quick, Draw! strokes -> rasterised `labelled_image` records (domain "sketch").

Inputs (a file or a folder of them; the class is the `word` field, else the file stem):

- `.ndjson` simplified: `drawing = [[x0, x1, ...], [y0, y1, ...]]` per stroke (0..255 box);
- `.ndjson` raw: `drawing = [[x...], [y...], [t...]]` per stroke (any pixel range; t ignored);
- sketch-rnn `.npz`: arrays of stroke-3 `(dx, dy, pen_lifted)` per drawing under the keys
  `train` / `valid` / `test` (choose with `npz_split`).

Rasterisation: the drawing's bounding box is scaled uniformly (aspect kept) to fit
`size - 2 * margin` pixels and centred; strokes are drawn as round-capped polylines of
`line_width` output pixels on white, at `supersample` times the size, then downsampled with a
box filter, which gives anti-aliased grey edges.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from sketch_tf.core.png import encode_png
from sketch_tf.data import schema
from sketch_tf.data.sources.common import (
    BadInputError,
    Converted,
    SourcePlan,
    class_index,
    plan_and_write,
)

#: Record kind this source writes.
KIND = schema.KIND_LABELLED_IMAGE


def strokes_from_ndjson_drawing(drawing, where: str) -> list[np.ndarray]:
    """`drawing` field of a Quick, Draw! ndjson line -> list of float [n, 2] (x, y) strokes."""
    if not isinstance(drawing, list) or not drawing:
        raise BadInputError(f"{where}: 'drawing' must be a non-empty list of strokes")
    out = []
    for k, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) < 2:
            raise BadInputError(f"{where}: stroke {k} must be [[x...], [y...](, [t...])]")
        xs, ys = np.asarray(stroke[0], np.float64), np.asarray(stroke[1], np.float64)
        if xs.shape != ys.shape or xs.ndim != 1 or xs.size == 0:
            raise BadInputError(f"{where}: stroke {k} has x/y of lengths {xs.shape}/{ys.shape}")
        out.append(np.stack([xs, ys], axis=1))
    return out


def strokes_from_stroke3(data, where: str) -> list[np.ndarray]:
    """sketch-rnn stroke-3 [n, 3] (dx, dy, pen_lifted after this point) -> (x, y) strokes."""
    arr = np.asarray(data, np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise BadInputError(f"{where}: expected stroke-3 array [n, 3], got {arr.shape}")
    xy = np.cumsum(arr[:, :2], axis=0)
    ends = np.flatnonzero(arr[:, 2] > 0.5)
    strokes, start = [], 0
    for e in list(ends) + [len(arr) - 1]:
        if e >= start:
            strokes.append(xy[start : e + 1])
        start = e + 1
    return [s for s in strokes if len(s)]


def rasterize(
    strokes: list[np.ndarray],
    size: int = 256,
    line_width: float = 3.0,
    margin: int = 8,
    supersample: int = 4,
) -> Image.Image:
    """Draw strokes black on white, aspect kept, anti-aliased.

    Args:
      strokes: list of float [n, 2] (x, y) polylines, any units (y down).
      size: output side in pixels; line_width: stroke width in output pixels;
      margin: empty border in output pixels; supersample: drawing scale before downsampling.

    Returns:
      PIL "L" image of size x size (255 = paper, 0 = ink).
    """
    if size <= 2 * margin:
        raise ValueError(f"size {size} must exceed 2 * margin ({margin})")
    pts = np.concatenate(strokes, axis=0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = float(max(hi - lo))
    s = supersample
    big = size * s
    scale = (size - 2 * margin) * s / extent if extent > 0 else 0.0
    # centre the scaled bounding box in the canvas
    offset = (big - (hi - lo) * scale) / 2.0 - lo * scale
    canvas = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(canvas)
    w = max(1, int(round(line_width * s)))
    r = w / 2.0
    for stroke in strokes:
        xy = stroke * scale + offset
        pts_list = [tuple(p) for p in xy]
        if len(pts_list) > 1:
            draw.line(pts_list, fill=0, width=w, joint="curve")
        for x, y in (pts_list[0], pts_list[-1]) if len(pts_list) > 1 else pts_list:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=0)  # round caps / single dots
    return canvas.resize((size, size), Image.Resampling.BOX)


class DrawingItem(NamedTuple):
    """One drawing to rasterise: a line of an `.ndjson` file or one drawing of an `.npz`.

    Attributes:
      order: (file index, line number or drawing index): single-process order.
      part: always "" (one dataset).
      file_class: class of the file (its stem).
      where: "<file>:<line>" or "<file>[<split>][<i>]" (named by errors and skips).
      payload: the ndjson line (str) or the stroke-3 array [n, 3].
      instance: instance id of an npz drawing; "" for ndjson (read from `key_id`).
    """

    order: tuple[int, int]
    part: str
    file_class: str
    where: str
    payload: str | np.ndarray
    instance: str


@dataclasses.dataclass(frozen=True)
class QuickDrawPlan(SourcePlan):
    """The files of a Quick, Draw! conversion and the raster options (see `plan`)."""

    root: Path
    files: tuple[Path, ...]
    classes: list[str]
    size: int = 256
    line_width: float = 3.0
    margin: int = 8
    npz_split: str = "train"
    max_per_class: int | None = None
    source: str = "quickdraw"
    kind: str = KIND
    parts: tuple[str, ...] = ("",)

    def units(self) -> list[tuple[int, Path]]:
        """(file index, path) of every input file."""
        return list(enumerate(self.files))

    def items(self, unit: tuple[int, Path]) -> Iterator[DrawingItem]:
        """The drawings of one file (at most `max_per_class`; blank ndjson lines skipped).

        Raises:
          BadInputError when an `.npz` file or its split cannot be read.
        """
        index, path = unit
        if path.suffix == ".ndjson":
            n = 0
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    if self.max_per_class is not None and n >= self.max_per_class:
                        break
                    n += 1
                    where = f"{path}:{line_no}"
                    yield DrawingItem((index, line_no), "", path.stem, where, line, "")
        elif path.suffix == ".npz":
            try:
                data = np.load(path, allow_pickle=True, encoding="latin1")
                arrays = data[self.npz_split]
            except (OSError, ValueError, KeyError) as e:
                raise BadInputError(f"{path}: cannot read split {self.npz_split!r} ({e})") from e
            for i, drawing in enumerate(arrays[: self.max_per_class]):
                where = f"{path}[{self.npz_split}][{i}]"
                instance = f"{path.stem}:{self.npz_split}:{i}"
                yield DrawingItem((index, i), "", path.stem, where, drawing, instance)
        else:
            raise ValueError(f"{path}: expected .ndjson or .npz")

    def convert(self, item: DrawingItem) -> Converted:
        """Parse, rasterise (`size` x `size` PNG) and encode one drawing.

        Raises:
          BadInputError naming `item.where` for a line that is not JSON or a malformed
          drawing; ValueError when an ndjson `word` differs from the file's class.
        """
        where, cname = item.where, item.file_class
        if isinstance(item.payload, str):
            try:
                obj = json.loads(item.payload)
                word = obj.get("word") or cname
                strokes = strokes_from_ndjson_drawing(obj.get("drawing"), where)
                default_instance = f"{cname}:{item.order[1]}"
                instance = str(obj.get("key_id", default_instance))
            except (json.JSONDecodeError, AttributeError) as e:
                raise BadInputError(f"{where}: invalid JSON ({e})") from e
        else:
            word, instance = cname, item.instance
            strokes = strokes_from_stroke3(item.payload, where)
        if word != cname:
            raise ValueError(f"{where}: word {word!r} differs from file class {cname!r}")
        class_id = self.classes.index(cname)
        image = encode_png(rasterize(strokes, self.size, self.line_width, self.margin))
        record = schema.encode_labelled_image(image, class_id, cname, "sketch", instance, where)
        return Converted(record, class_id, cname, "sketch")

    def info(self, part: str) -> dict:
        return {
            "size": self.size,
            "line_width": self.line_width,
            "margin": self.margin,
            "npz_split": self.npz_split,
            "max_per_class": self.max_per_class,
        }


#: `group_by` of `prepare` when not given (one shard stream per class).
DEFAULT_GROUP_BY = "class"


def plan(
    root,
    size: int = 256,
    line_width: float = 3.0,
    margin: int = 8,
    npz_split: str = "train",
    max_per_class: int | None = None,
    categories=None,
) -> QuickDrawPlan:
    """The conversion `prepare` does, before anything is read beyond the file list.

    Args:
      root: an `.ndjson` / `.npz` file or a folder of them (one class per file).
      size, line_width, margin: raster size, stroke width and border in output pixels.
      npz_split: key of sketch-rnn `.npz` files to read.
      max_per_class: read at most this many drawings per file.
      categories: only these file stems (class names), default all.

    Raises:
      ValueError when `root` does not exist, holds no input file or lacks a category.
    """
    root = Path(root)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".ndjson", ".npz"))
    else:
        raise ValueError(f"quickdraw source {root} does not exist")
    if categories is not None:
        wanted = set(categories)
        files = [f for f in files if f.stem in wanted]
        missing = wanted - {f.stem for f in files}
        if missing:
            raise ValueError(f"{root}: no file for categories {sorted(missing)}")
    if not files:
        raise ValueError(f"{root}: no .ndjson or .npz files")
    classes = sorted(class_index(f.stem for f in files))
    return QuickDrawPlan(
        root, tuple(files), classes, size, line_width, margin, npz_split, max_per_class
    )


def prepare(root, out_dir, **options) -> dict:
    """Rasterise Quick, Draw! drawings into a `labelled_image` dataset (domain "sketch").

    Args:
      root: an `.ndjson` / `.npz` file or a folder of them (one class per file).
      out_dir: output dataset folder (written atomically).
      **options: the output options of `common.plan_and_write` (`skip_bad`: skip malformed
        drawings, recorded in the manifest, instead of failing; `shard_bytes`, `group_by`,
        `overwrite`) and `size`, `line_width`, `margin`, `npz_split`, `max_per_class`,
        `categories`: see `plan`.

    Returns:
      the manifest dict.
    """
    return plan_and_write(plan, root, out_dir, DEFAULT_GROUP_BY, **options)
