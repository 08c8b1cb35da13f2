"""Evaluation pictures drawn with PIL, and TensorBoard projector files.

PIL only (no matplotlib): the pictures are simple grids, lines and polylines, PIL is already a
dependency, and the module stays importable without a display or a plotting stack. Every function
returns a ``PIL.Image.Image`` (RGB); ``save_png`` writes one, ``to_array`` gives the ``uint8``
``[H, W, 3]`` array that ``tf.summary.image`` takes (add a batch axis).

Images passed in may be PIL images or arrays ``[H, W]`` / ``[H, W, C]`` (``uint8`` 0..255, float
0..1).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GREEN = (30, 170, 60)
RED = (220, 40, 40)
QUERY_BLUE = (40, 90, 220)
EXEMPLAR_ORANGE = (240, 150, 20)
NEUTRAL_GREY = (150, 150, 150)
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def to_pil(image) -> Image.Image:
    """RGB PIL image from a PIL image or an array [H, W] / [H, W, C] (uint8, or float in 0..1)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"image: expected [H, W], [H, W, 1|3|4] or a PIL image, got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def to_array(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] array of a PIL image."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def save_png(image: Image.Image, path) -> Path:
    """Writes ``image`` as PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _thumb(image, size: int) -> Image.Image:
    """Image fitted (aspect kept) and centred on a white size x size square."""
    img = to_pil(image)
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (size, size), "white")
    out.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return out


# -- retrieval grid -------------------------------------------------------------------------------


def retrieval_grid(
    query_images: Sequence,
    result_images: Sequence[Sequence],
    correct,
    thumb_size: int = 96,
    border: int = 4,
    gap: int = 4,
    exemplar_images: Sequence | None = None,
) -> Image.Image:
    """One row per query: the query sketch (blue frame), then its top-k results.

    Results get a green frame when they are relevant to the query (e.g. of its class) and red
    otherwise. With `exemplar_images` (Q images: a style exemplar per query) each row shows
    the sketch, then the exemplar (orange frame), then the results.

    Args:
      query_images: Q images.
      result_images: Q sequences of k images each, best first.
      correct: bool [Q, k], or None (no ground truth: grey frames).
      thumb_size: side of each thumbnail, pixels.
      border: frame width, pixels.
      gap: space between cells (and twice that after the query column), pixels.

    Returns:
      RGB image of width ``gap + (k + 1) * (cell + gap) + gap`` and height
      ``gap + Q * (cell + gap)``, with ``cell = thumb_size + 2 * border``.
    """
    q = len(query_images)
    if correct is None:  # no ground truth (a query at serving time): grey frames
        ok = np.zeros((q, len(result_images[0]) if q else 0), bool)
        colours = (NEUTRAL_GREY, NEUTRAL_GREY)
    else:
        ok = np.asarray(correct, dtype=bool)
        colours = (GREEN, RED)
    if ok.ndim != 2 or ok.shape[0] != q or len(result_images) != q:
        raise ValueError(
            f"retrieval_grid: {q} queries, {len(result_images)} result rows and correct of shape "
            f"{ok.shape}: expected Q rows everywhere and correct of shape [Q, k]"
        )
    k = ok.shape[1]
    extra = 0 if exemplar_images is None else 1
    if extra and len(exemplar_images) != q:
        raise ValueError(f"retrieval_grid: {q} queries but {len(exemplar_images)} exemplars")
    for i, row in enumerate(result_images):
        if len(row) != k:
            raise ValueError(f"retrieval_grid: result row {i} has {len(row)} images, expected {k}")
    cell = thumb_size + 2 * border
    width = gap + (k + 1 + extra) * (cell + gap) + gap
    height = gap + q * (cell + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    def put(img, x, y, colour):
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
        canvas.paste(_thumb(img, thumb_size), (x + border, y + border))

    for i in range(q):
        y = gap + i * (cell + gap)
        put(query_images[i], gap, y, QUERY_BLUE)
        if extra:
            put(exemplar_images[i], gap + cell + gap, y, EXEMPLAR_ORANGE)
        for j in range(k):
            x = gap + (j + 1 + extra) * (cell + gap) + gap
            put(result_images[i][j], x, y, colours[0] if ok[i, j] else colours[1])
    return canvas


def heatmap(
    values,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    cell: int = 44,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Image.Image:
    """A table of values in [vmin, vmax] as coloured cells (white -> blue) with the value
    written in each cell, row labels on the left and column labels on top.

    Args:
      values: float [R, C] (NaN cells are drawn grey, "n/a").
      row_labels, col_labels: R and C names.
      title: drawn above the table.
      cell: cell side, pixels.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"heatmap: values of shape {v.shape} for {len(row_labels)} rows and "
            f"{len(col_labels)} columns"
        )
    font = ImageFont.load_default()
    left = 8 + 7 * max([len(str(r)) for r in row_labels] + [1])
    top = 24 + 7 * max([len(str(c)) for c in col_labels] + [1]) // 2
    width = left + cell * v.shape[1] + 8
    height = top + cell * v.shape[0] + 8
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0), font=font)
    for j, name in enumerate(col_labels):
        # Column labels alternate between two lines so that long names do not overlap.
        draw.text(
            (left + j * cell + 2, 16 + 10 * (j % 2)), str(name)[:12], fill=(0, 0, 0), font=font
        )
    span = max(vmax - vmin, 1e-12)
    for i, name in enumerate(row_labels):
        y = top + i * cell
        draw.text((4, y + cell // 2 - 5), str(name), fill=(0, 0, 0), font=font)
        for j in range(v.shape[1]):
            x = left + j * cell
            val = v[i, j]
            if np.isfinite(val):
                t = float(np.clip((val - vmin) / span, 0.0, 1.0))
                colour = tuple(int(round(255 + (b - 255) * t)) for b in (30, 80, 200))
                text = f"{val:.2f}"
            else:
                colour, text = (200, 200, 200), "n/a"
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour)
            ink = (255, 255, 255) if np.isfinite(val) and t > 0.6 else (0, 0, 0)
            draw.text((x + 6, y + cell // 2 - 5), text, fill=ink, font=font)
    return canvas


# -- correspondence picture -----------------------------------------------------------------------


def _colours(n: int) -> list[tuple[int, int, int]]:
    """n distinct saturated colours (hue wheel, golden-ratio steps)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.9)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def match_picture(
    image_a,
    image_b,
    points_a,
    points_b,
    pairs,
    gap: int = 16,
    line_width: int = 1,
    radius: int = 3,
    correct=None,
) -> Image.Image:
    """Two drawings side by side with a coloured line per match.

    Args:
      image_a, image_b: the two sketches.
      points_a: [Na, 2] (x, y) pixels in A; points_b: [Nb, 2] in B.
      pairs: int [M, 2] (index in A, index in B), e.g. from a matcher.
      gap: white space between the drawings, pixels.
      line_width, radius: line width and point marker radius, pixels.
      correct: optional bool [M]; when given lines are green (correct) / red (wrong) instead of
        one colour per match.

    Returns:
      RGB image of size (width_a + gap + width_b, max(height_a, height_b)).
    """
    a, b = to_pil(image_a), to_pil(image_b)
    pa = np.asarray(points_a, dtype=np.float64).reshape(-1, 2)
    pb = np.asarray(points_b, dtype=np.float64).reshape(-1, 2)
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pr) and (pr[:, 0].max() >= len(pa) or pr[:, 1].max() >= len(pb) or pr.min() < 0):
        raise ValueError(
            f"match_picture pairs: indices must be < {len(pa)} (A) and < {len(pb)} (B)"
        )
    canvas = Image.new("RGB", (a.width + gap + b.width, max(a.height, b.height)), "white")
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    if correct is not None:
        ok = np.asarray(correct, dtype=bool).reshape(-1)
        if ok.shape != (len(pr),):
            raise ValueError(f"match_picture correct: expected shape ({len(pr)},), got {ok.shape}")
        colours = [GREEN if c else RED for c in ok]
    else:
        colours = _colours(len(pr))
    dx = a.width + gap
    for (i, j), colour in zip(pr, colours, strict=True):
        xa, ya = pa[i]
        xb, yb = pb[j][0] + dx, pb[j][1]
        draw.line([xa, ya, xb, yb], fill=colour, width=line_width)
        for x, y in ((xa, ya), (xb, yb)):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour)
    return canvas


# -- curve plot -----------------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step - 1e-9) * step
    return np.arange(start, hi + step * 1e-6, step)


def _fmt(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if v != 0 else "0"


def curve_plot(
    curves: Mapping[str, tuple],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (640, 480),
    ylim: tuple[float, float] | None = None,
) -> Image.Image:
    """Line plot of several curves with axes, ticks, labels and a legend.

    Args:
      curves: {method name: (x [T], y [T])}, e.g. PCK against threshold for each method.
      title, xlabel, ylabel: texts.
      size: (width, height) of the picture, pixels.
      ylim: y range; default the data range (``(0, 1)`` when all y are in it).

    Returns:
      RGB image of ``size``.
    """
    if not curves:
        raise ValueError("curve_plot curves: expected at least one {name: (x, y)} entry")
    data = {}
    for name, (x, y) in curves.items():
        x, y = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
        if x.shape != y.shape or len(x) == 0:
            raise ValueError(f"curve_plot curve {name!r}: x {x.shape} and y {y.shape} differ")
        data[name] = (x, y)
    xs = np.concatenate([v[0] for v in data.values()])
    ys = np.concatenate([v[1] for v in data.values()])
    x0, x1 = float(xs.min()), float(xs.max())
    if ylim is None:
        ylim = (0.0, 1.0) if ys.min() >= 0 and ys.max() <= 1 else (float(ys.min()), float(ys.max()))
    y0, y1 = ylim
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 <= y0:
        y1 = y0 + 1.0

    width, height = size
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 60, 20, 30, 50
    pw, ph = width - left - right, height - top - bottom
    if pw < 20 or ph < 20:
        raise ValueError(f"curve_plot size: {size} is too small for axes and labels")

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * pw, top + (1.0 - (y - y0) / (y1 - y0)) * ph)

    # Grid, ticks and tick labels.
    for t in _nice_ticks(x0, x1):
        sx, _ = px(t, y0)
        draw.line([sx, top, sx, top + ph], fill=(230, 230, 230))
        draw.line([sx, top + ph, sx, top + ph + 4], fill="black")
        draw.text((sx, top + ph + 6), _fmt(t), fill="black", font=font, anchor="ma")
    for t in _nice_ticks(y0, y1):
        _, sy = px(x0, t)
        draw.line([left, sy, left + pw, sy], fill=(230, 230, 230))
        draw.line([left - 4, sy, left, sy], fill="black")
        draw.text((left - 6, sy), _fmt(t), fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    draw.text((left + pw / 2, 8), title, fill="black", font=font, anchor="ma")
    draw.text((left + pw / 2, height - 14), xlabel, fill="black", font=font, anchor="ma")
    # Vertical y label: draw on a strip and rotate it.
    if ylabel:
        box = draw.textbbox((0, 0), ylabel, font=font)
        strip = Image.new("RGB", (box[2] - box[0] + 4, box[3] - box[1] + 4), "white")
        ImageDraw.Draw(strip).text((2 - box[0], 2 - box[1]), ylabel, fill="black", font=font)
        strip = strip.rotate(90, expand=True)
        img.paste(strip, (4, int(top + ph / 2 - strip.height / 2)))

    # Curves (clipped to the plot box) and legend.
    for n, (name, (x, y)) in enumerate(data.items()):
        colour = _PALETTE[n % len(_PALETTE)]
        pts = [px(a, min(max(b, y0), y1)) for a, b in zip(x, y, strict=True)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for sx, sy in pts:
            draw.ellipse([sx - 2, sy - 2, sx + 2, sy + 2], fill=colour)
        ly = top + 8 + 14 * n
        draw.line([left + 10, ly, left + 30, ly], fill=colour, width=2)
        draw.text((left + 34, ly), str(name), fill="black", font=font, anchor="lm")
    return img


# -- TensorBoard projector ------------------------------------------------------------------------


def _clean(value) -> str:
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_projector(
    log_dir,
    embeddings,
    labels,
    thumbnails=None,
    tensor_name: str = "gallery_embeddings",
    sprite_max_side: int = 8192,
    write_checkpoint: bool = False,
) -> Path:
    """Files TensorBoard's embedding projector reads from ``log_dir``.

    Writes ``tensors.tsv`` (one embedding per line), ``metadata.tsv`` (one label per line, no
    header, as the projector expects for a single column), ``sprite.png`` (when thumbnails are
    given: a square grid of thumbnails in row-major order, each cell ``single_image_dim`` pixels,
    the whole sprite at most ``sprite_max_side`` pixels, TensorBoard's limit) and
    ``projector_config.pbtxt`` pointing to them. TensorBoard loads TSV tensors without a checkpoint
    (run it with ``--logdir`` at ``log_dir`` or a parent). With ``write_checkpoint=True`` the
    embeddings are also saved as a ``tf.train.Checkpoint`` variable (TensorFlow imported then) and
    the config names that tensor instead of the TSV file.

    Args:
      log_dir: folder (created).
      embeddings: float [N, D].
      labels: [N] labels (any printable value).
      thumbnails: optional N images (arrays or PIL), e.g. the gallery photos.
      tensor_name: name shown in the projector.

    Returns:
      Path of ``projector_config.pbtxt``.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise ValueError(f"write_projector embeddings: expected [N, D] with N > 0, got {emb.shape}")
    n = emb.shape[0]
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"write_projector labels: expected {n} labels, got {len(labels)}")
    if thumbnails is not None and len(thumbnails) != n:
        raise ValueError(f"write_projector thumbnails: expected {n} images, got {len(thumbnails)}")
    out = Path(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.tsv").write_text("".join(_clean(v) + "\n" for v in labels))
    lines = [f"  tensor_name: {_quote(tensor_name)}", '  metadata_path: "metadata.tsv"']
    if write_checkpoint:
        import tensorflow as tf  # noqa: PLC0415 - optional, heavy

        ckpt = tf.train.Checkpoint(embedding=tf.Variable(emb, name=tensor_name))
        ckpt.save(str(out / "embedding.ckpt"))
        lines[0] = '  tensor_name: "embedding/.ATTRIBUTES/VARIABLE_VALUE"'
    else:
        np.savetxt(out / "tensors.tsv", emb, delimiter="\t", fmt="%.6g")
        lines.append('  tensor_path: "tensors.tsv"')
    if thumbnails is not None:
        per_side = math.ceil(math.sqrt(n))
        dim = max(1, min(64, sprite_max_side // per_side))
        sprite = Image.new("RGB", (per_side * dim, per_side * dim), "white")
        for i, img in enumerate(thumbnails):
            sprite.paste(_thumb(img, dim), ((i % per_side) * dim, (i // per_side) * dim))
        sprite.save(out / "sprite.png", format="PNG")
        lines += [
            "  sprite {",
            '    image_path: "sprite.png"',
            f"    single_image_dim: {dim}",
            f"    single_image_dim: {dim}",
            "  }",
        ]
    config = out / "projector_config.pbtxt"
    config.write_text("embeddings {\n" + "\n".join(lines) + "\n}\n")
    return config


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'
