"""The embedded default data: a procedural 3D shape world rendered as sketches, photos,
seven depiction styles and cross-shape point correspondences (pure NumPy; no OpenGL).

Typical use::

    rng = np.random.default_rng(0)
    shape = make_shape("chair", rng)
    buffers = render(shape, random_camera(rng), 256)
    sketch = line_drawing(buffers, rng)          # uint8 (256, 256, 3), dark strokes on white
    pair = correspondence_pair("chair", rng)     # two 512 px drawings + matched points

`prepare_synthetic(task, out_dir, seed=..., ...)` writes TFRecords for the three tasks.
"""

from sketch_tf.data.synthetic.categories import CATEGORIES, make_shape, semantic_points
from sketch_tf.data.synthetic.correspondence import (
    N_SEMANTIC,
    correspondence_pair,
    semantic_world_points,
    visible_semantic_points,
)
from sketch_tf.data.synthetic.draw import STYLES, feature_edges, line_drawing, photo, stylize
from sketch_tf.data.synthetic.geometry import (
    Buffers,
    Camera,
    Part,
    Shape,
    look_at_camera,
    project,
    random_camera,
    render,
)
from sketch_tf.data.synthetic.mesh import (
    Mesh,
    load_mesh,
    load_obj,
    load_ply,
    render_mesh,
    visible_points,
)
from sketch_tf.data.synthetic.prepare import TASKS, encode_png, prepare_synthetic

__all__ = [
    "CATEGORIES",
    "N_SEMANTIC",
    "STYLES",
    "TASKS",
    "Buffers",
    "Camera",
    "Mesh",
    "Part",
    "Shape",
    "correspondence_pair",
    "encode_png",
    "feature_edges",
    "line_drawing",
    "load_mesh",
    "load_obj",
    "load_ply",
    "look_at_camera",
    "make_shape",
    "photo",
    "prepare_synthetic",
    "project",
    "random_camera",
    "render",
    "render_mesh",
    "semantic_points",
    "semantic_world_points",
    "stylize",
    "visible_points",
    "visible_semantic_points",
]
