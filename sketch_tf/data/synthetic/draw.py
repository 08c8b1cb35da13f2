"""Images from render buffers: hand-drawn line drawings, shaded photos and seven styles.

All functions take `Buffers` (see geometry.py) and an `np.random.Generator` and return uint8
(H, W, 3) RGB images. Sizes in pixels scale with the image size (constants below are given
for 256 x 256 and multiplied by size / 256).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from sketch_tf.data.synthetic.geometry import Buffers

#: Depiction styles, named after the BAM! media attributes.
STYLES = ["3d_graphics", "comic", "graphite", "oilpaint", "pen_ink", "vectorart", "watercolor"]


# ----------------------------------------------------------------------------------------
# Feature lines
# ----------------------------------------------------------------------------------------


def feature_edges(buffers: Buffers, crease_deg: float = 40.0, depth_rel: float = 0.04):
    """Boolean (H, W) map of feature lines of a rendered view.

    A pixel is on a line when, against its right or lower neighbour, it changes
    foreground/background (silhouette), part id (part boundary), depth by more than
    `depth_rel` of its depth (occluding contour), or normal direction by more than
    `crease_deg` degrees (crease).
    """
    pid = buffers.part_id
    m = buffers.mask
    d = np.where(m, buffers.depth, 0.0)
    n = buffers.normal
    cos_t = np.cos(np.radians(crease_deg))
    e = np.zeros(pid.shape, bool)
    for sl_a, sl_b in (
        ((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
        ((slice(0, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        ma, mb = m[sl_a], m[sl_b]
        both = ma & mb
        da, db = d[sl_a], d[sl_b]
        edge = ma != mb
        edge |= both & (pid[sl_a] != pid[sl_b])
        edge |= both & (np.abs(da - db) > depth_rel * np.minimum(da, db))
        # (n[sl_a] * n[sl_b]).sum(-1), the same operations in the same order, without a
        # reduction over the short last axis.
        na, nb = n[sl_a], n[sl_b]
        cos_ab = na[..., 0] * nb[..., 0] + na[..., 1] * nb[..., 1]
        cos_ab += na[..., 2] * nb[..., 2]
        edge |= both & (cos_ab < cos_t)
        # Mark the nearer pixel so lines sit on the object, not on the background.
        near_a = np.where(both, da <= db, ma)
        e[sl_a] |= edge & near_a
        e[sl_b] |= edge & ~near_a
    return e


@functools.lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) float32 Gaussian interpolation weights from a coarse grid to pixels."""
    centres = (np.arange(cells) - 0.5) * size / (cells - 2)
    x = np.arange(size, dtype=np.float64)[:, None]
    sigma = 0.6 * size / (cells - 2)
    w = np.exp(-0.5 * ((x - centres[None]) / sigma) ** 2)
    w[w < 1e-6] = 0.0  # subnormal float32 weights make the products 30x slower
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise (channels, size, size) with unit-ish amplitude from a coarse random grid.

    The grid (cells + 2 per side) is interpolated with separable Gaussian weights.
    """
    a = _interp_matrix(size, cells + 2)
    g = rng.uniform(-1, 1, size=(channels, cells + 2, cells + 2)).astype(np.float32)
    # einsum, not matmul: these tiny products must not wake up a multi-threaded BLAS.
    out = np.einsum("cil,jl->cij", np.einsum("ik,ckl->cil", a, g), a)
    return out / np.maximum(np.abs(out).max(axis=(1, 2), keepdims=True), 1e-6)


def _noise_at(rng, size: int, cells: int, ys, xs, channels: int = 1) -> np.ndarray:
    """The same kind of smooth noise as `_noise`, evaluated only at pixels (ys, xs): (C, N)."""
    a = _interp_matrix(size, cells + 2)
    g = rng.uniform(-1, 1, size=(channels, cells + 2, cells + 2)).astype(np.float32)
    ay, ax = a[np.clip(ys, 0, size - 1)], a[np.clip(xs, 0, size - 1)]
    out = np.einsum("nk,ckl,nl->cn", ay, g, ax)
    # normalise by the field's maximum over the grid, approximated by the grid values
    return out / max(float(np.abs(g).max()), 1e-6)


def _warp(img: np.ndarray, dx: np.ndarray, dy: np.ndarray, cval: float = 0.0) -> np.ndarray:
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return ndimage.map_coordinates(img, [yy + dy, xx + dx], order=1, cval=cval, prefilter=False)


def _splat(ys: np.ndarray, xs: np.ndarray, size: int, weight: np.ndarray) -> np.ndarray:
    """Bilinear forward splat of weighted points (float pixel coords) into (size, size)."""
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = ys - y0, xs - x0
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    out = np.zeros(size * size, np.float64)
    for oy, ox, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + oy, x0 + ox
        ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
        wk = (w * weight)[ok]
        out += np.bincount(yy[ok] * size + xx[ok], weights=wk, minlength=size * size)
    return out.reshape(size, size).astype(np.float32)


def _strokes(edge_pixels, rng, size, width, wobble, gap_rate, pressure, scale_about=None):
    """Stroke ink (H, W) float in [0, 1] from the (rows, cols) of an edge map's pixels
    (`np.nonzero(edges)`), with wobble, gaps and width.

    The edge pixels are moved (forward-splatted) along a smooth random displacement field, so
    the cost grows with the line length, not the image area.
    """
    s = size / 256.0
    ys, xs = edge_pixels
    ys, xs = ys.astype(np.float64), xs.astype(np.float64)
    if scale_about is not None:
        # Overshoot: a slightly enlarged copy of the lines whose ends run past the corners.
        cy, cx, k = scale_about
        ys, xs = cy + (ys - cy) * k, cx + (xs - cx) * k
    yi = np.clip(ys.astype(np.int64), 0, size - 1)
    xi = np.clip(xs.astype(np.int64), 0, size - 1)
    # Smooth fields evaluated at the line pixels only: displacement (wobble), gaps and pressure
    # (ink amount along the stroke).
    disp = _noise_at(rng, size, int(rng.integers(5, 9)), yi, xi, 2) * wobble * s
    weight = 1 - pressure * (0.5 + 0.5 * _noise_at(rng, size, 6, yi, xi)[0])
    if gap_rate > 0:
        gaps = _noise_at(rng, size, int(rng.integers(12, 24)), yi, xi)[0]
        weight = weight * np.clip((gaps - (2 * gap_rate - 1)) * 4, 0, 1)
    ink = _splat(ys + disp[1], xs + disp[0], size, weight)
    # Stroke width: grow the lines with a max filter, then soften the border.
    wpx = max(1, int(round(width * s)))
    if wpx > 1:
        ink = ndimage.maximum_filter(ink, size=wpx)
    ink = ndimage.gaussian_filter(ink, 0.5 * s + 0.2, truncate=3.0)
    return np.clip(ink * 1.6, 0, 1)


def line_drawing(
    buffers: Buffers,
    rng: np.random.Generator,
    *,
    stroke_width: float | None = None,
    wobble: float | None = None,
    gap_rate: float | None = None,
    overshoot: float | None = None,
    crease_deg: float = 40.0,
) -> np.ndarray:
    """A hand-drawn-looking line drawing: dark strokes on white.

    Lines are silhouettes, occluding contours, creases and part boundaries of the view,
    displaced by a smooth random field (wobble), broken by low-frequency gaps, thickened to a
    stroke width with varying pressure, and doubled by a slightly enlarged second pass
    (overshoot past corners, as in quick sketches).

    Args:
      buffers: render output.
      rng: randomness of the perturbation.
      stroke_width: line width in pixels at 256 px (default uniform 1.5..3).
      wobble: displacement amplitude in pixels at 256 px (default 0.8..2.5).
      gap_rate: fraction of line length dropped, about (default 0..0.15).
      overshoot: relative enlargement of the second pass (default 0..0.02; 0 disables).
      crease_deg: normal angle above which a crease is drawn, degrees.

    Returns:
      uint8 (H, W, 3) RGB, white background (255), strokes dark gray to black.
    """
    size = buffers.size
    stroke_width = rng.uniform(1.5, 3.0) if stroke_width is None else stroke_width
    wobble = rng.uniform(0.8, 2.5) if wobble is None else wobble
    gap_rate = rng.uniform(0.0, 0.15) if gap_rate is None else gap_rate
    overshoot = rng.uniform(0.0, 0.02) if overshoot is None else overshoot
    edges = feature_edges(buffers, crease_deg=crease_deg)
    edge_pixels = np.nonzero(edges)
    ink = _strokes(edge_pixels, rng, size, stroke_width, wobble, gap_rate, 0.4)
    if overshoot > 0:
        ys, xs = np.nonzero(buffers.mask)
        if len(ys):
            about = (float(ys.mean()), float(xs.mean()), 1.0 + overshoot)
            ink2 = _strokes(edge_pixels, rng, size, stroke_width * 0.7, wobble, 0.3, 0.6, about)
            ink = np.maximum(ink, 0.6 * ink2)
    darkness = rng.uniform(0.75, 1.0)
    gray = 255.0 * (1 - darkness * np.clip(ink, 0, 1))
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


# ----------------------------------------------------------------------------------------
# Shading helpers
# ----------------------------------------------------------------------------------------


def _light(rng) -> np.ndarray:
    """Camera-space unit light direction from the upper front, random side."""
    v = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.0)])
    return v / np.linalg.norm(v)


def _lambert(
    buffers: Buffers, light: np.ndarray, vn: np.ndarray | None = None, specular: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Diffuse and specular terms (H, W) of a camera-space light; `vn` is
    `buffers.view_normal()` when the caller has it, `specular=False` skips the second term."""
    vn = buffers.view_normal() if vn is None else vn
    diff = np.clip(vn @ light.astype(np.float32), 0, 1)
    if not specular:
        return diff, None
    half = light + np.array([0, 0, 1.0])
    half /= np.linalg.norm(half)
    spec = np.clip(vn @ half.astype(np.float32), 0, 1)
    return diff, spec


def _part_palette(rng, n_parts: int, saturation=(0.3, 0.9), value=(0.35, 0.95)) -> np.ndarray:
    """(n_parts + 1, 3) float RGB colours in [0, 1]; index 0 unused (background)."""
    base_h = rng.uniform()
    h = (base_h + rng.normal(0, 0.15, size=n_parts + 1)) % 1.0
    # Some parts share a colour (same material), as real objects do.
    share = rng.uniform(size=n_parts + 1) < 0.5
    h[share] = base_h
    s = rng.uniform(*saturation, size=n_parts + 1)
    v = rng.uniform(*value, size=n_parts + 1)
    return _hsv_to_rgb(h, s, v)


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    h6 = (np.asarray(h) % 1.0) * 6.0
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )
    return np.take_along_axis(table, i[None, ..., None], 0)[0]


def _texture(buffers: Buffers, rng, n_parts: int) -> np.ndarray:
    """(H, W) multiplicative texture in about [0.7, 1.1] from canonical part coordinates, on
    the foreground (1 on the background, which `photo` does not show).

    Each pattern is evaluated only at the foreground pixels whose part uses it (element-wise
    operations, so the values are those of evaluating it over the whole image and selecting:
    float64 sines cost about 20 ns each)."""
    c = buffers.part_coord
    pid = buffers.part_id.astype(int)
    kind = rng.integers(0, 4, size=n_parts + 1)  # 0 plain, 1 stripes, 2 wood rings, 3 checker
    freq = rng.uniform(3, 12, size=n_parts + 1)
    axis = rng.integers(0, 3, size=n_parts + 1)
    k = kind[pid]
    out = np.ones(pid.shape)
    for pattern in (1, 2, 3):
        sel = (k == pattern) & buffers.mask
        if not sel.any():
            continue
        p = pid[sel]
        f = freq[p]
        cs = c[sel]  # (M, 3) float32
        if pattern == 1:  # stripes
            ca = cs[np.arange(len(p)), axis[p]]
            out[sel] = 0.9 + 0.1 * np.sign(np.sin(f * np.pi * ca))
        elif pattern == 2:  # wood rings
            r = np.sqrt(cs[:, 0] ** 2 + cs[:, 2] ** 2)
            out[sel] = 0.85 + 0.15 * np.sin(f * 2 * np.pi * r + 3 * cs[:, 1]) ** 2
        else:  # checker
            sc = np.sin(f[:, None] * np.pi * cs)
            out[sel] = 0.9 + 0.1 * np.sign(sc[:, 0] * sc[:, 1] * sc[:, 2] + 1e-6)
    return out.astype(np.float32)


def _background(rng, size: int, c0, c1, grain: float) -> np.ndarray:
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    bg = (1 - t) * np.asarray(c0, np.float32) + t * np.asarray(c1, np.float32)
    bg = np.broadcast_to(bg, (size, size, 3)).copy()
    if grain > 0:
        bg += grain * rng.normal(size=(size, size, 1)).astype(np.float32)
    return bg


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def photo(buffers: Buffers, rng: np.random.Generator) -> np.ndarray:
    """A shaded "photo": coloured materials, procedural textures, key + fill light, specular
    highlights, a soft contact shadow and a gradient background with sensor noise.

    Returns:
      uint8 (H, W, 3) RGB.
    """
    size = buffers.size
    n_parts = int(buffers.part_id.max()) + 1
    pal = _part_palette(rng, max(n_parts, 16)).astype(np.float32)
    albedo = pal[buffers.part_id] * _texture(buffers, rng, max(n_parts, 16))[..., None]
    light = _light(rng)
    vn = buffers.view_normal()
    diff, spec = _lambert(buffers, light, vn)
    fill_diff, _ = _lambert(buffers, np.array([-light[0], 0.2, 0.9]) / 1.1, vn, specular=False)
    gloss = rng.uniform(8, 64)
    spec_amt = rng.uniform(0.1, 0.6)
    shade = 0.25 + 0.75 * diff + 0.15 * fill_diff
    fg = albedo * shade[..., None] + spec_amt * (spec**gloss)[..., None]
    c0 = rng.uniform(0.5, 1.0, size=3)
    c1 = c0 * rng.uniform(0.5, 0.9)
    bg = _background(rng, size, c0, c1, 0.0)
    # Contact shadow: the silhouette blurred and shifted down, darkening the background.
    shadow = ndimage.gaussian_filter(buffers.mask.astype(np.float32), 4 * size / 256)
    shadow = np.roll(shadow, int(6 * size / 256), axis=0)
    bg *= (1 - 0.35 * shadow)[..., None]
    img = np.where(buffers.mask[..., None], fg, bg)
    img += rng.uniform(0.0, 0.03) * rng.normal(size=img.shape).astype(np.float32)
    return _to_uint8(img)


# ----------------------------------------------------------------------------------------
# Styles
# ----------------------------------------------------------------------------------------


def _hatch(size, rng, angle, period, phase=0.0, wobble=0.0):
    """(H, W) float in [0, 1]: 1 on the lines of a parallel hatching pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if wobble > 0:
        u = u + wobble * _noise(rng, size, 8)[0]
    return (np.cos(2 * np.pi * (u / period + phase)) > 0.55).astype(np.float32)


def _outline(buffers: Buffers, width_px: float) -> np.ndarray:
    e = feature_edges(buffers, crease_deg=50.0).astype(np.float32)
    w = max(1, int(round(width_px)))
    if w > 1:
        e = ndimage.maximum_filter(e, size=w)
    return e


def stylize(buffers: Buffers, style: str, rng: np.random.Generator) -> np.ndarray:
    """Depict a rendered view in one of the seven `STYLES`.

    3d_graphics: glossy Phong-shaded plastic on a studio gradient. comic: two-tone cel shading,
    thick black outlines, halftone dots in shadow. graphite: gray paper grain, pencil hatching
    whose density follows the shade, soft gray outlines. oilpaint: saturated colours smeared
    by oriented brush strokes with impasto relief on canvas. pen_ink: pure black-on-white
    outlines and cross-hatching. vectorart: flat part colours, crisp thin same-hue outlines,
    flat background. watercolor: pale washes that bleed past the silhouette with darker
    pigment at their edges on rough paper, light pencil lines.

    Returns:
      uint8 (H, W, 3) RGB.
    """
    if style not in STYLES:
        raise ValueError(f"stylize: unknown style {style!r}; expected one of {STYLES}")
    size = buffers.size
    s = size / 256.0
    m = buffers.mask
    mf = m.astype(np.float32)
    pal = _part_palette(rng, 16).astype(np.float32)
    light = _light(rng)
    # (only 3d_graphics shows a highlight)
    diff, spec = _lambert(buffers, light, specular=style == "3d_graphics")
    shade = 0.3 + 0.7 * diff

    if style == "3d_graphics":
        pal = _part_palette(rng, 16, saturation=(0.5, 1.0), value=(0.6, 1.0)).astype(np.float32)
        fg = pal[buffers.part_id] * (0.2 + 0.8 * diff)[..., None] + 0.8 * (spec**40)[..., None]
        bg = _background(rng, size, (0.85, 0.87, 0.9), (0.45, 0.47, 0.52), 0.0)
        shadow = ndimage.gaussian_filter(mf, 6 * s)
        bg *= (1 - 0.4 * np.roll(shadow, int(8 * s), axis=0))[..., None]
        return _to_uint8(np.where(m[..., None], fg, bg))

    if style == "comic":
        pal = _part_palette(rng, 16, saturation=(0.7, 1.0), value=(0.8, 1.0)).astype(np.float32)
        tone = np.where(diff > 0.45, 1.0, 0.6).astype(np.float32)
        fg = pal[buffers.part_id] * tone[..., None]
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        period = 5 * s
        dots = (np.sin(xx * np.pi / period) * np.sin(yy * np.pi / period)) > 0.5
        fg = np.where((dots & (tone < 1))[..., None], fg * 0.4, fg)
        bg = np.ones((size, size, 3), np.float32) * np.array(
            _hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 0.5), 1.0), np.float32
        )
        img = np.where(m[..., None], fg, bg)
        ink = _outline(buffers, 3.5 * s)
        return _to_uint8(img * (1 - ink)[..., None])

    if style == "graphite":
        paper = 0.93 + 0.03 * rng.normal(size=(size, size)).astype(np.float32)
        paper = ndimage.uniform_filter(paper, 2)
        dark = (1 - shade) * mf
        ang = rng.uniform(0.5, 1.0)
        h1 = _hatch(size, rng, ang, 4 * s, wobble=1.5 * s)
        h2 = _hatch(size, rng, ang + 0.6, 4 * s, wobble=1.5 * s)
        tone = 0.35 * h1 * (dark > 0.15) + 0.3 * h2 * (dark > 0.4) + 0.15 * dark
        tone = ndimage.gaussian_filter(tone, 0.6 * s)
        lines = ndimage.gaussian_filter(_outline(buffers, 1.5 * s), 0.7 * s)
        g = paper * (1 - np.clip(tone + 0.55 * lines, 0, 0.8))
        return _to_uint8(np.repeat(g[..., None], 3, axis=2))

    if style == "oilpaint":
        pal = _part_palette(rng, 16, saturation=(0.6, 1.0), value=(0.5, 0.9)).astype(np.float32)
        fg = pal[buffers.part_id] * shade[..., None]
        bg = _background(rng, size, rng.uniform(0.2, 0.7, 3), rng.uniform(0.1, 0.5, 3), 0.0)
        img = np.where(m[..., None], fg, bg)
        img += 0.08 * _noise(rng, size, 12, 3).transpose(1, 2, 0)
        # Brush strokes: smear along one direction, and a relief lit from the side.
        ang = rng.uniform(0, np.pi)
        ln = int(9 * s) | 1
        k = np.zeros((ln, ln), np.float32)
        for i in range(ln):
            t = i - ln // 2
            k[int(round(ln // 2 + t * np.sin(ang))), int(round(ln // 2 + t * np.cos(ang)))] = 1
        k /= k.sum()
        img = np.stack([ndimage.convolve(img[..., c], k, mode="nearest") for c in range(3)], -1)
        relief = ndimage.convolve(rng.normal(size=(size, size)).astype(np.float32), k)
        relief = ndimage.sobel(relief, axis=1)
        relief /= max(float(relief.std()), 1e-6)
        yy, xx = np.mgrid[0:size, 0:size]
        canvas = 0.04 * (((xx // max(1, int(2 * s))) + (yy // max(1, int(2 * s)))) % 2)
        img = img * (1 + 0.07 * relief[..., None]) - canvas[..., None]
        return _to_uint8(img)

    if style == "pen_ink":
        dark = (1 - shade) * mf
        ang = rng.uniform(-0.9, -0.4)
        h1 = _hatch(size, rng, ang, 5 * s)
        h2 = _hatch(size, rng, ang + np.pi / 2, 5 * s)
        hatch = np.maximum(h1 * (dark > 0.25), h2 * (dark > 0.5))
        ink = np.maximum(_outline(buffers, 2 * s), hatch * 0.999)
        g = np.where(ink > 0.5, 0.0, 1.0).astype(np.float32)
        return _to_uint8(np.repeat(g[..., None], 3, axis=2))

    if style == "vectorart":
        pal = _part_palette(rng, 16, saturation=(0.5, 0.9), value=(0.7, 1.0)).astype(np.float32)
        fg = pal[buffers.part_id] * np.where(diff > 0.3, 1.0, 0.85)[..., None]
        bg = np.ones((size, size, 3), np.float32) * np.array(
            _hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.4), rng.uniform(0.85, 1.0)), np.float32
        )
        img = np.where(m[..., None], fg, bg)
        ink = _outline(buffers, 1.5 * s)
        return _to_uint8(np.where(ink[..., None] > 0, img * 0.55, img))

    # watercolor
    pal = _part_palette(rng, 16, saturation=(0.3, 0.7), value=(0.8, 1.0)).astype(np.float32)
    wash = pal[buffers.part_id] * (0.6 + 0.4 * shade)[..., None]
    disp = _noise(rng, size, 6, 2) * 5 * s
    wash = np.stack([_warp(wash[..., c], disp[0], disp[1], 1.0) for c in range(3)], -1)
    alpha = _warp(mf, disp[0], disp[1])
    alpha = ndimage.gaussian_filter(alpha, 3 * s)
    # Pigment pools at the wash border: darken where alpha is around its edge.
    rim = np.clip(1 - np.abs(alpha - 0.5) * 4, 0, 1)
    blot = 0.5 + 0.5 * _noise(rng, size, 12)[0]
    a = np.clip(alpha * (0.55 + 0.3 * blot) + 0.25 * rim, 0, 1)
    paper = 1 - 0.04 * np.abs(ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0 * s))
    paper = paper.astype(np.float32)[..., None]
    wash_c = np.stack([ndimage.gaussian_filter(wash[..., c], 2 * s) for c in range(3)], -1)
    img = paper * (1 - a[..., None]) + wash_c * a[..., None] * paper
    pencil = ndimage.gaussian_filter(_outline(buffers, 1), 0.5 * s)
    img *= (1 - 0.3 * pencil)[..., None]
    return _to_uint8(img)
