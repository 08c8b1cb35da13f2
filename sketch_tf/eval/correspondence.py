"""Correspondence evaluation for line drawings: point sampling, matchers, baselines, PCK and CMC.

Conventions used throughout:

* Images are sketches with dark strokes on a white background, ``[H, W]`` or ``[H, W, C]``;
  ``uint8`` is read as 0..255, floating point as 0..1. "Ink" is ``1 - intensity`` (channel mean).
* Points are float arrays ``[N, 2]`` of ``(x, y)`` pixel coordinates: x = column, y = row, origin
  at the top-left pixel centre.
* Descriptors are float arrays ``[N, D]`` compared with the Euclidean distance.
* A matcher returns an int64 array ``[M, 2]`` of index pairs ``(i in A, j in B)``, sorted by i.

Pure NumPy/SciPy: this runs after the descriptors are computed (``evaluate.py`` and ``match``).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import pdist
from scipy.special import logsumexp

from sketch_tf.eval.baselines import area_matrix
from sketch_tf.eval.retrieval import as_finite_2d

#: Thresholds (fractions of the image side) reported in tables: 2.5 %, 5 % and 10 %.
PCK_REPORT_THRESHOLDS = (0.025, 0.05, 0.10)


# -- inputs ---------------------------------------------------------------------------------------


def _points(name: str, points) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected (x, y) points of shape [N, 2], got {arr.shape}")
    return arr


def _descriptors(name: str, desc) -> np.ndarray:
    return as_finite_2d(name, desc, "{name}: expected descriptors of shape [N, D], got {shape}")


def ink_map(image) -> np.ndarray:
    """Ink amount in [0, 1] per pixel (1 = black stroke), float64 [H, W]."""
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image: expected [H, W] or [H, W, C], got shape {img.shape}")
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    x = img.astype(np.float64) / scale
    if x.ndim == 3:
        x = x.mean(axis=2)
    return np.clip(1.0 - x, 0.0, 1.0)


def pairwise_distances(a, b) -> np.ndarray:
    """Euclidean distances, float64 [Na, Nb], between descriptor sets a [Na, D] and b [Nb, D]."""
    a = _descriptors("descriptors_a", a)
    b = _descriptors("descriptors_b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptors_a {a.shape} and descriptors_b {b.shape}: dims differ")
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


# -- point sampling -------------------------------------------------------------------------------


def grid_points(mask, stride: int) -> np.ndarray:
    """Points on a regular grid inside a mask.

    Args:
      mask: bool-like [H, W]; True where points may lie (e.g. ``ink_map(img) > 0.5``).
      stride: grid step in pixels; grid nodes sit at ``stride // 2 + k * stride``.

    Returns:
      float64 [N, 2] (x, y), in row-major order.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask: expected [H, W], got shape {m.shape}")
    if int(stride) <= 0:
        raise ValueError(f"stride: expected a positive pixel step, got {stride}")
    s = int(stride)
    sub = m[s // 2 :: s, s // 2 :: s]
    rows, cols = np.nonzero(sub)
    return np.stack([cols * s + s // 2, rows * s + s // 2], axis=1).astype(np.float64)


def poisson_disk_points(mask, r: float, seed: int = 0) -> np.ndarray:
    """Poisson-disk sample of mask pixels: no two points closer than ``r`` pixels.

    Dart throwing over the mask pixels in random order with a background grid of cell
    ``r / sqrt(2)`` (each cell holds at most one point), so the sample is maximal: every mask pixel
    lies within ``r`` of a chosen point.

    Args:
      mask: bool-like [H, W] (stroke pixels, or the inside of a shape).
      r: minimum distance between points, pixels (> 0).
      seed: seed of the visiting order.

    Returns:
      float64 [N, 2] (x, y) pixel coordinates.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask: expected [H, W], got shape {m.shape}")
    if not r > 0:
        raise ValueError(f"r: expected a positive radius in pixels, got {r}")
    rows, cols = np.nonzero(m)
    order = np.random.default_rng(seed).permutation(len(rows))
    cell = r / np.sqrt(2.0)
    gh, gw = int(m.shape[0] / cell) + 1, int(m.shape[1] / cell) + 1
    grid = -np.ones((gh, gw), dtype=np.int64)
    reach = int(np.ceil(r / cell))
    r2 = r * r
    px, py = [], []
    for k in order:
        x, y = float(cols[k]), float(rows[k])
        gx, gy = int(x / cell), int(y / cell)
        if grid[gy, gx] >= 0:
            continue
        block = grid[max(gy - reach, 0) : gy + reach + 1, max(gx - reach, 0) : gx + reach + 1]
        near = block[block >= 0]
        if near.size:
            dx = np.asarray(px)[near] - x
            dy = np.asarray(py)[near] - y
            if np.any(dx * dx + dy * dy < r2):
                continue
        grid[gy, gx] = len(px)
        px.append(x)
        py.append(y)
    return np.stack([np.asarray(px), np.asarray(py)], axis=1).reshape(-1, 2)


# -- matchers -------------------------------------------------------------------------------------


def match_nearest(descriptors_a, descriptors_b) -> np.ndarray:
    """Each point of A matched to its nearest descriptor in B: int64 [Na, 2] pairs."""
    d = pairwise_distances(descriptors_a, descriptors_b)
    return np.stack([np.arange(d.shape[0]), np.argmin(d, axis=1)], axis=1).astype(np.int64)


def match_mutual_nn(descriptors_a, descriptors_b) -> np.ndarray:
    """Pairs (i, j) where j is i's nearest neighbour in B and i is j's in A: int64 [M, 2]."""
    d = pairwise_distances(descriptors_a, descriptors_b)
    ab = np.argmin(d, axis=1)
    ba = np.argmin(d, axis=0)
    keep = ba[ab] == np.arange(d.shape[0])
    i = np.nonzero(keep)[0]
    return np.stack([i, ab[i]], axis=1).astype(np.int64)


def match_hungarian(descriptors_a, descriptors_b, max_distance: float | None = None) -> np.ndarray:
    """One-to-one assignment minimising the summed descriptor distance (Hungarian algorithm).

    Args:
      descriptors_a: [Na, D]; descriptors_b: [Nb, D].
      max_distance: optional; assigned pairs farther apart than this are dropped.

    Returns:
      int64 [min(Na, Nb) or fewer, 2] pairs.
    """
    d = pairwise_distances(descriptors_a, descriptors_b)
    i, j = linear_sum_assignment(d)
    if max_distance is not None:
        keep = d[i, j] <= max_distance
        i, j = i[keep], j[keep]
    return np.stack([i, j], axis=1).astype(np.int64)


def sinkhorn_log(scores: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Log of the balanced optimal-transport plan for a score matrix, computed in log domain.

    Row marginals 1/Na, column marginals 1/Nb (no dustbin). ``scores`` [Na, Nb] plays the role of
    ``-cost / temperature``; returns log P [Na, Nb] after ``iterations`` row+column normalisations.
    """
    log_p = np.asarray(scores, dtype=np.float64).copy()
    na, nb = log_p.shape
    log_r, log_c = -np.log(na), -np.log(nb)
    for _ in range(int(iterations)):
        log_p += log_r - logsumexp(log_p, axis=1, keepdims=True)
        log_p += log_c - logsumexp(log_p, axis=0, keepdims=True)
    return log_p


def match_sinkhorn(
    descriptors_a, descriptors_b, temperature: float = 0.1, iterations: int = 100
) -> np.ndarray:
    """Sinkhorn matching: soft assignment, then mutual argmax.

    Scores are ``-distance / temperature``; the transport plan is obtained by
    :func:`sinkhorn_log` (balanced, no dustbin). A pair (i, j) is kept when j is the argmax of row
    i and i is the argmax of column j of the plan.

    Args:
      descriptors_a: [Na, D]; descriptors_b: [Nb, D].
      temperature: > 0, in descriptor distance units; lower = sharper plan.
      iterations: Sinkhorn iterations.

    Returns:
      int64 [M, 2] pairs.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive value, got {temperature}")
    d = pairwise_distances(descriptors_a, descriptors_b)
    log_p = sinkhorn_log(-d / temperature, iterations)
    ab = np.argmax(log_p, axis=1)
    ba = np.argmax(log_p, axis=0)
    i = np.nonzero(ba[ab] == np.arange(d.shape[0]))[0]
    return np.stack([i, ab[i]], axis=1).astype(np.int64)


MATCHERS = {
    "nearest": match_nearest,
    "mutual_nn": match_mutual_nn,
    "hungarian": match_hungarian,
    "sinkhorn": match_sinkhorn,
}


def predicted_points(pairs, points_b, num_a: int) -> np.ndarray:
    """Location in B predicted for every point of A by a matcher; NaN where A is unmatched.

    Args:
      pairs: int [M, 2] from a matcher.
      points_b: [Nb, 2] (x, y) of the descriptors of B.
      num_a: number of points of A.

    Returns:
      float64 [num_a, 2].
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pb = _points("points_b", points_b)
    out = np.full((int(num_a), 2), np.nan)
    out[pairs[:, 0]] = pb[pairs[:, 1]]
    return out


# -- metrics --------------------------------------------------------------------------------------


def pck_curve(pred_points, true_points, image_size, thresholds=PCK_REPORT_THRESHOLDS) -> np.ndarray:
    """Fraction of correct correspondences (PCK) for each threshold.

    A prediction is correct when its Euclidean distance to the true location is <= threshold x
    image side (the longer side for non-square images). Unmatched predictions (NaN) count as
    wrong; the denominator is the number of true points.

    Args:
      pred_points: float [N, 2] (x, y) predicted locations, NaN rows for unmatched points.
      true_points: float [N, 2] (x, y) ground-truth locations.
      image_size: side in pixels (int) or (height, width).
      thresholds: sequence of fractions of the side, e.g. ``(0.025, 0.05, 0.1)``.

    Returns:
      float64 [T] fractions in [0, 1].
    """
    pred = _points("pred_points", pred_points)
    true = _points("true_points", true_points)
    if pred.shape != true.shape:
        raise ValueError(f"pred_points {pred.shape} and true_points {true.shape}: shapes differ")
    side = float(np.max(np.atleast_1d(image_size)))
    if not side > 0:
        raise ValueError(f"image_size: expected a positive size in pixels, got {image_size}")
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(true) == 0:
        return np.zeros(len(thr))
    err = np.linalg.norm(pred - true, axis=1)
    err = np.where(np.isnan(err), np.inf, err)
    return (err[None, :] <= thr[:, None] * side).mean(axis=1)


def cmc(descriptors_a, descriptors_b, match_index, max_rank: int | None = None):
    """Cumulative match characteristic: rank of the true match of each point of A among B.

    The rank of the true match j* of point i is 1 + the number of descriptors of B strictly closer
    to i than j*, plus the equally close ones with a smaller index (stable order).

    Args:
      descriptors_a: [Na, D]; descriptors_b: [Nb, D].
      match_index: int [Na], index in B of each point's true match.
      max_rank: curve length (default Nb).

    Returns:
      (ranks int64 [Na], 1-based; curve float64 [max_rank], curve[r-1] = fraction with rank <= r).
    """
    d = pairwise_distances(descriptors_a, descriptors_b)
    idx = np.asarray(match_index, dtype=np.int64)
    if idx.shape != (d.shape[0],) or np.any(idx < 0) or np.any(idx >= d.shape[1]):
        raise ValueError(
            f"match_index: expected {d.shape[0]} indices in [0, {d.shape[1]}), got shape "
            f"{idx.shape}"
        )
    true_d = d[np.arange(d.shape[0]), idx][:, None]
    earlier = np.arange(d.shape[1])[None, :] < idx[:, None]
    ranks = 1 + np.sum((d < true_d) | ((d == true_d) & earlier), axis=1)
    n = d.shape[1] if max_rank is None else int(max_rank)
    curve = (ranks[None, :] <= np.arange(1, n + 1)[:, None]).mean(axis=1)
    return ranks.astype(np.int64), curve


# -- non-learned baselines ------------------------------------------------------------------------


def raw_patch_descriptors(image, points, patch_size: int = 64, out_size: int = 8) -> np.ndarray:
    """Downsampled raw patch around each point (non-learned baseline).

    A ``patch_size`` x ``patch_size`` window centred on the (rounded) point is cut from the ink
    map (white = no ink outside the image), area-averaged to ``out_size`` x ``out_size`` and
    L2-normalised (an empty patch stays all zeros).

    Args:
      image: sketch [H, W] or [H, W, C].
      points: [N, 2] (x, y) pixels.
      patch_size: window side in pixels.
      out_size: descriptor grid side; D = out_size**2.

    Returns:
      float32 [N, out_size**2].
    """
    ink = ink_map(image)
    pts = _points("points", points)
    if patch_size <= 0 or out_size <= 0 or out_size > patch_size:
        raise ValueError(
            f"patch_size={patch_size}, out_size={out_size}: expected 0 < out_size <= patch_size"
        )
    half = patch_size // 2
    padded = np.pad(ink, half + 1, mode="constant", constant_values=0.0)
    cx = np.rint(pts[:, 0]).astype(np.int64) + half + 1
    cy = np.rint(pts[:, 1]).astype(np.int64) + half + 1
    cx = np.clip(cx, half, padded.shape[1] - (patch_size - half))
    cy = np.clip(cy, half, padded.shape[0] - (patch_size - half))
    offs = np.arange(patch_size) - half
    patches = padded[(cy[:, None] + offs)[:, :, None], (cx[:, None] + offs)[:, None, :]]
    a = area_matrix(patch_size, out_size)
    small = np.einsum("op,npq,rq->nor", a, patches, a).reshape(len(pts), -1)
    norm = np.linalg.norm(small, axis=1, keepdims=True)
    small = np.divide(small, norm, out=np.zeros_like(small), where=norm > 0)
    return small.astype(np.float32)


def shape_context_descriptors(
    image,
    points,
    n_radial: int = 6,
    n_angular: int = 12,
    r_inner: float = 0.125,
    r_outer: float = 2.0,
    ink_threshold: float = 0.5,
    max_ink_points: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Shape context (Belongie et al. 2002) of stroke pixels around each point (baseline).

    Radius choice: distances are divided by the mean pairwise distance between the (sampled)
    stroke pixels of the drawing, which makes the descriptor scale invariant; the ``n_radial``
    bins have log-spaced edges from ``r_inner`` to ``r_outer`` times that mean (Belongie's 1/8 and
    2). Pixels closer than the first edge fall in the first bin, farther than ``r_outer`` are
    ignored, the point's own pixel (distance 0) is skipped. Angles are absolute (image x axis,
    y down; not rotation invariant) in ``n_angular`` equal sectors. Each histogram is normalised to
    sum 1 (all zeros when no stroke pixel falls inside). Stroke pixels are ``ink > ink_threshold``,
    subsampled to ``max_ink_points`` in a seeded, position-independent way, so translating the
    drawing together with the points leaves the descriptors unchanged.

    Args:
      image: sketch [H, W] or [H, W, C].
      points: [N, 2] (x, y) pixels.
      n_radial, n_angular: bins; D = n_radial * n_angular.

    Returns:
      float32 [N, n_radial * n_angular].
    """
    pts = _points("points", points)
    if n_radial <= 0 or n_angular <= 0 or not 0 < r_inner < r_outer:
        raise ValueError(
            f"n_radial={n_radial}, n_angular={n_angular}, r_inner={r_inner}, r_outer={r_outer}: "
            "expected positive bin counts and 0 < r_inner < r_outer"
        )
    rows, cols = np.nonzero(ink_map(image) > ink_threshold)
    out = np.zeros((len(pts), n_radial * n_angular), dtype=np.float64)
    if len(rows) < 2 or len(pts) == 0:
        return out.astype(np.float32)
    if len(rows) > max_ink_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_ink_points, replace=False))
        rows, cols = rows[keep], cols[keep]
    ink_xy = np.stack([cols, rows], axis=1).astype(np.float64)
    mean_d = float(pdist(ink_xy).mean())
    vec = ink_xy[None, :, :] - pts[:, None, :]
    dist = np.sqrt((vec**2).sum(-1)) / mean_d
    ang = np.mod(np.arctan2(vec[..., 1], vec[..., 0]), 2 * np.pi)
    edges = np.logspace(np.log10(r_inner), np.log10(r_outer), n_radial + 1)
    r_bin = np.clip(np.searchsorted(edges, dist, side="right") - 1, 0, n_radial - 1)
    a_bin = np.minimum((ang / (2 * np.pi) * n_angular).astype(np.int64), n_angular - 1)
    valid = (dist > 0) & (dist <= r_outer)
    which = np.nonzero(valid)
    flat = which[0] * (n_radial * n_angular) + r_bin[which] * n_angular + a_bin[which]
    out = np.bincount(flat, minlength=out.size).reshape(out.shape).astype(np.float64)
    total = out.sum(axis=1, keepdims=True)
    out = np.divide(out, total, out=np.zeros_like(out), where=total > 0)
    return out.astype(np.float32)
