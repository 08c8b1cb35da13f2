"""Two-sketch matching with a trained SketchZooms model (`match.py`): describe points of two
drawings, match the descriptors, write the matches as JSON and a picture.

Coordinates: points are float (x, y) pixels with the origin at the top-left *corner* of pixel
(0, 0) (the `sketch_tf.data.zooms` / record convention). A drawing is resized to the config's
`data.image_size` (aspect kept, white pad) exactly as training did, the mapped points are
described, and points are reported back in the input image's frame.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline
from sketch_tf.data.images import load_image
from sketch_tf.eval import correspondence as corr
from sketch_tf.eval import plots
from sketch_tf.models.zooms import describe_points

#: match.py method names -> matchers of `sketch_tf.eval.correspondence`.
MATCH_METHODS = {
    "nn": "nearest",
    "mutual_nn": "mutual_nn",
    "hungarian": "hungarian",
    "sinkhorn": "sinkhorn",
}


# ---- images and descriptors ---------------------------------------------------------------------
def load_drawing(path: str) -> np.ndarray:
    """Reads a PNG / JPEG (grey, RGB or RGBA: alpha composited on white) -> float32 [H, W, 3]
    in [0, 1]. Raises ValueError naming the file when it is missing or does not decode."""
    return pipeline.decode_image(tf.constant(load_image(path))).numpy()


def fit_image(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize-pad [H, W, 3] to [size, size, 3] -> (image, scale [2], offset [2]); a point p of
    the input lands at p * scale + offset."""
    img, scale, offset = pipeline.resize_pad_geometry(tf.constant(image, tf.float32), size, 1.0)
    return img.numpy(), scale.numpy(), offset.numpy()


def describe_image(task, model, image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Descriptors float32 [N, D] of `points` [N, 2] (input-image pixels) of `image` [H, W, 3]
    in [0, 1], with the task's preprocessing (resize to data.image_size) and zoom geometry."""
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    img, scale, offset = fit_image(image, int(task.config.data.image_size))
    kw = task.zoom_kwargs(training=False)
    bp = int(task.config.eval.batch_points)
    return describe_points(model, img, pts * scale + offset, zoom_kwargs=kw, batch_points=bp)


# ---- matching -----------------------------------------------------------------------------------
def match_descriptors(desc_a, desc_b, method: str) -> np.ndarray:
    """int64 [M, 2] pairs (index in A, index in B) with `method` in MATCH_METHODS."""
    if method not in MATCH_METHODS:
        raise ValueError(f"method must be one of {sorted(MATCH_METHODS)}, got {method!r}")
    return corr.MATCHERS[MATCH_METHODS[method]](desc_a, desc_b)


def mutual_nn_agreement(desc_a, desc_b, ref_a, ref_b) -> dict[str, float]:
    """How our mutual-NN matches agree with those of reference descriptors of the same points.

    Args:
      desc_a, desc_b: our descriptors [Na, D], [Nb, D]; ref_a, ref_b: reference descriptors
        [Na, D'], [Nb, D'] of the same points in the same order.

    Returns:
      {"ours": |M_ours|, "reference": |M_ref|, "common": |M_ours & M_ref|,
       "agreement": common / |M_ref| (share of the reference's matches we reproduce),
       "precision": common / |M_ours|, "nn_agreement": share of A points whose nearest
       neighbour in B is the same for both, "chance_nn": 1 / Nb (random descriptors' expected
       nn_agreement)} — fractions in [0, 1] (0 when a set is empty).
    """
    if len(desc_a) != len(ref_a) or len(desc_b) != len(ref_b):
        raise ValueError(
            f"mutual_nn_agreement: ours {len(desc_a)}/{len(desc_b)} points vs reference "
            f"{len(ref_a)}/{len(ref_b)}"
        )
    ours = {tuple(p) for p in corr.match_mutual_nn(desc_a, desc_b).tolist()}
    ref = {tuple(p) for p in corr.match_mutual_nn(ref_a, ref_b).tolist()}
    common = len(ours & ref)
    nn_ours = corr.match_nearest(desc_a, desc_b)[:, 1]
    nn_ref = corr.match_nearest(ref_a, ref_b)[:, 1]
    return {
        "ours": len(ours),
        "reference": len(ref),
        "common": common,
        "agreement": common / len(ref) if ref else 0.0,
        "precision": common / len(ours) if ours else 0.0,
        "nn_agreement": float(np.mean(nn_ours == nn_ref)) if len(nn_ours) else 0.0,
        "chance_nn": 1.0 / max(len(desc_b), 1),
    }


def load_points(path: str) -> np.ndarray:
    """[N, 2] (x, y) pixel points from a .npy file; raises ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such points file")
    pts = np.load(path)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
        raise ValueError(f"{path}: expected finite (x, y) points of shape [N, 2], got {pts.shape}")
    return pts.astype(np.float32)


#: The original's dense sampling radius (px on a 512 px sketch; `utils/sampling.py`).
DEFAULT_RADIUS = 5.0


def load_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """Silhouette mask from an image file: bool [H, W], True inside the shape.

    Convention of the SketchZooms example masks (`*_mask.png`): the filled shape is dark on
    white (luminance < 0.5 after compositing alpha on white). Raises ValueError naming the file
    when it is unreadable or its size differs from the sketch's `shape`.
    """
    try:
        ink = corr.ink_map(load_drawing(path))
    except ValueError as e:
        raise ValueError(f"mask {path}: {e}") from e
    if ink.shape != tuple(shape):
        raise ValueError(f"mask {path}: size {ink.shape} differs from its sketch's {tuple(shape)}")
    return ink > 0.5


def stroke_silhouette(image: np.ndarray, threshold: float = 0.5, close_px: int = 2) -> np.ndarray:
    """Filled silhouette of a drawing's strokes, bool [H, W]: stroke pixels closed over gaps
    of up to `2 * close_px` px, then every enclosed region filled (`binary_fill_holes`). The
    stand-in for a silhouette mask when none is given."""
    from scipy import ndimage

    ink = corr.ink_map(image) > threshold
    structure = np.ones((2 * close_px + 1, 2 * close_px + 1), bool)
    closed = ndimage.binary_closing(ink, structure=structure, border_value=0)
    return ndimage.binary_fill_holes(closed | ink)


def sample_points(
    image: np.ndarray, radius: float = DEFAULT_RADIUS, seed: int = 0, mask: np.ndarray | None = None
) -> np.ndarray:
    """Poisson-disk sample (min distance `radius` px) inside `mask` (bool [H, W]), as the
    original samples dense points inside the filled silhouette; without a mask, inside
    `stroke_silhouette(image)`. Returns float32 [N, 2] (x, y) pixel centres (corner
    convention)."""
    if mask is None:
        mask = stroke_silhouette(image)
    return (corr.poisson_disk_points(mask, radius, seed) + 0.5).astype(np.float32)


def run_match(
    task,
    model,
    image_a_path: str,
    image_b_path: str,
    output_prefix: str,
    method: str = "mutual_nn",
    points_a: np.ndarray | None = None,
    points_b: np.ndarray | None = None,
    radius: float = DEFAULT_RADIUS,
    max_lines: int = 200,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    mask_a: str | None = None,
    mask_b: str | None = None,
) -> dict[str, Any]:
    """Two sketches in -> correspondences out: writes `<output_prefix>.json` and
    `<output_prefix>.png` (side by side, one coloured line per match, at most `max_lines`
    drawn) and returns the JSON payload (plus the descriptors under `_desc_a`/`_desc_b`).

    Points not given are a Poisson-disk sample with `radius` px (5, the original's) inside the
    silhouette mask file `mask_a` / `mask_b` (`load_mask`), or inside the filled silhouette of
    the strokes when no mask is given.

    `reference`: optional descriptors ([Na, D'], [Nb, D']) of the same given points from
    another model (e.g. the original SketchZooms' stored ones); the payload then carries
    `"reference_agreement"` (`mutual_nn_agreement`). Shapes and masks are checked before
    anything is computed or written."""
    img_a, img_b = load_drawing(image_a_path), load_drawing(image_b_path)

    def points(img, given, mask_path):
        if given is not None:
            return np.asarray(given, np.float32)
        mask = load_mask(mask_path, img.shape[:2]) if mask_path else None
        return sample_points(img, radius, mask=mask)

    pa, pb = points(img_a, points_a, mask_a), points(img_b, points_b, mask_b)
    if len(pa) == 0 or len(pb) == 0:
        raise ValueError(
            f"no points to match ({len(pa)} in {image_a_path}, {len(pb)} in {image_b_path})"
        )
    if reference is not None:
        if points_a is None or points_b is None:
            raise ValueError("reference descriptors need the given points (points_a, points_b)")
        ref_a, ref_b = (np.asarray(r, np.float32) for r in reference)
        for name, ref, pts in (("A", ref_a, pa), ("B", ref_b, pb)):
            if ref.ndim != 2 or len(ref) != len(pts):
                raise ValueError(
                    f"reference descriptors of {name}: expected [{len(pts)}, D] (one row per "
                    f"given point), got shape {ref.shape}"
                )
    da = describe_image(task, model, img_a, pa)
    db = describe_image(task, model, img_b, pb)
    pairs = match_descriptors(da, db, method)
    dist = np.linalg.norm(da[pairs[:, 0]] - db[pairs[:, 1]], axis=1) if len(pairs) else []
    payload = {
        "image_a": image_a_path,
        "image_b": image_b_path,
        "method": method,
        "num_points_a": len(pa),
        "num_points_b": len(pb),
        "matches": [
            {
                "a": int(i),
                "b": int(j),
                "xy_a": pa[i].tolist(),
                "xy_b": pb[j].tolist(),
                "distance": float(d),
            }
            for (i, j), d in zip(pairs.tolist(), dist, strict=True)
        ],  # fmt: skip
    }
    if reference is not None:
        payload["reference_agreement"] = mutual_nn_agreement(da, db, ref_a, ref_b)
    out_dir = os.path.dirname(output_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(output_prefix + ".json", "w") as f:
        json.dump(payload, f, indent=1)
    shown = pairs
    if len(pairs) > max_lines:
        shown = pairs[np.linspace(0, len(pairs) - 1, max_lines).astype(int)]
    plots.save_png(plots.match_picture(img_a, img_b, pa, pb, shown), output_prefix + ".png")
    payload["_desc_a"], payload["_desc_b"], payload["_pairs"] = da, db, pairs
    return payload
