"""Cross-shape point correspondences between line drawings (SketchZooms training data)."""

from __future__ import annotations

import numpy as np

from sketch_tf.data.synthetic.categories import make_shape, semantic_points
from sketch_tf.data.synthetic.draw import line_drawing
from sketch_tf.data.synthetic.geometry import (
    Buffers,
    Camera,
    Shape,
    canonical_to_world,
    random_camera,
    render,
)
from sketch_tf.data.synthetic.mesh import visible_points

#: Number of fixed semantic points per category (ids 0..N_SEMANTIC-1).
N_SEMANTIC = 256


def semantic_world_points(shape: Shape, n_semantic: int = N_SEMANTIC):
    """World positions of the category's semantic points on one instance.

    Returns:
      points (n_semantic, 3) float64 and present (n_semantic,) bool (False where the instance
      lacks the part, or the point sits on a degenerate cap such as a cone's tip).
    """
    ids, coords = semantic_points(shape.category, n_semantic)
    pts = np.zeros((n_semantic, 3))
    present = np.zeros(n_semantic, bool)
    for part in shape.parts:
        sel = np.flatnonzero(ids == part.part_id)
        if len(sel) == 0:
            continue
        c = coords[sel]
        ok = np.ones(len(sel), bool)
        if part.kind == "frustum":
            r_cap = np.where(c[:, 1] < 0, part.r0, part.r1)
            ok = ~((np.abs(np.abs(c[:, 1]) - 1) < 1e-9) & (r_cap <= 1e-6))
        pts[sel] = canonical_to_world(part, c)
        present[sel] = ok
    return pts, present


def visible_semantic_points(shape: Shape, buffers: Buffers, n_semantic: int = N_SEMANTIC):
    """Pixel positions and visibility of every semantic point in one rendered view.

    A point is visible when it is present on the instance, projects inside the image, passes
    the depth test, and the part-id buffer at its pixel shows its own part.

    Returns:
      xy (n_semantic, 2) float64 pixels and visible (n_semantic,) bool.
    """
    ids, _ = semantic_points(shape.category, n_semantic)
    pts, present = semantic_world_points(shape, n_semantic)
    xy, vis = visible_points(buffers, pts)
    size = buffers.size
    pix = np.clip(np.floor(xy).astype(np.int64), 0, size - 1)
    same_part = buffers.part_id[pix[:, 1], pix[:, 0]] == ids
    return xy, vis & present & same_part


def correspondence_pair(
    category: str,
    rng: np.random.Generator,
    size: int = 512,
    n_points: int | None = 64,
    *,
    shape_a: Shape | None = None,
    shape_b: Shape | None = None,
    camera_a: Camera | None = None,
    camera_b: Camera | None = None,
    n_semantic: int = N_SEMANTIC,
) -> dict:
    """Two line drawings of one category with matched semantic points.

    By default two different random instances are drawn, each from its own random view.

    Args:
      category: one of `CATEGORIES`.
      rng: source of shapes (when not given), views and drawing perturbations.
      size: image side in pixels (512 as in SketchZooms).
      n_points: keep at most this many of the points visible in both views (a random subset,
        in ascending id order); None keeps all.
      shape_a, shape_b, camera_a, camera_b: override the instances / views.
      n_semantic: size of the category's semantic point set.

    Returns:
      dict with `image_a`, `image_b` uint8 (size, size, 3) drawings; `points_a`, `points_b`
      float32 (N, 2) pixel (x, y) (schema convention: pixel (c, r) centre at (c+.5, r+.5));
      `point_ids` int64 (N,) semantic ids; `buffers_a`, `buffers_b` the render buffers;
      `shape_a`, `shape_b`, `camera_a`, `camera_b`.
    """
    shape_a = make_shape(category, rng) if shape_a is None else shape_a
    shape_b = make_shape(category, rng) if shape_b is None else shape_b
    camera_a = random_camera(rng) if camera_a is None else camera_a
    camera_b = random_camera(rng) if camera_b is None else camera_b
    buf_a = render(shape_a, camera_a, size)
    buf_b = render(shape_b, camera_b, size)
    xy_a, vis_a = visible_semantic_points(shape_a, buf_a, n_semantic)
    xy_b, vis_b = visible_semantic_points(shape_b, buf_b, n_semantic)
    ids = np.flatnonzero(vis_a & vis_b)
    if n_points is not None and len(ids) > n_points:
        ids = np.sort(rng.choice(ids, size=n_points, replace=False))
    return {
        "image_a": line_drawing(buf_a, rng),
        "image_b": line_drawing(buf_b, rng),
        "points_a": xy_a[ids].astype(np.float32),
        "points_b": xy_b[ids].astype(np.float32),
        "point_ids": ids.astype(np.int64),
        "buffers_a": buf_a,
        "buffers_b": buf_b,
        "shape_a": shape_a,
        "shape_b": shape_b,
        "camera_a": camera_a,
        "camera_b": camera_b,
    }
