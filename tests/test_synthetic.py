"""Tests of the procedural shape world: geometry, drawings, styles, correspondences, meshes."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from sketch_tf.data.synthetic import (
    CATEGORIES,
    STYLES,
    Part,
    Shape,
    correspondence_pair,
    line_drawing,
    load_mesh,
    look_at_camera,
    make_shape,
    photo,
    random_camera,
    render,
    render_mesh,
    semantic_points,
    stylize,
    visible_points,
)
from sketch_tf.data.synthetic.categories import CATEGORY_PROGRAMS
from sketch_tf.data.synthetic.geometry import canonical_to_world, project
from sketch_tf.data.synthetic.mesh import Mesh, load_obj, load_ply


def _single(kind, scale, **kw):
    part = Part("p", 1, kind, scale, np.eye(3), (0, 0, 0), **kw)
    return Shape("test", ["p"], [part])


def test_categories_and_variation():
    assert len(CATEGORIES) >= 12 and len(set(CATEGORIES)) == len(CATEGORIES)
    for cat in CATEGORIES:
        a = make_shape(cat, np.random.default_rng(1))
        b = make_shape(cat, np.random.default_rng(2))
        names = CATEGORY_PROGRAMS[cat][1]
        for p in a.parts:
            assert names[p.part_id - 1] == p.name
            # normalised into the sphere of radius 0.9
            assert np.linalg.norm(p.corners(), axis=1).max() <= 0.9 + 1e-9
        # two seeds give different proportions
        ca = np.concatenate([p.corners() for p in a.parts])
        cb = np.concatenate([p.corners() for p in b.parts])
        assert ca.shape != cb.shape or not np.allclose(ca, cb)
    with pytest.raises(ValueError, match="unknown category"):
        make_shape("spaceship", np.random.default_rng(0))


def test_render_unit_box_matches_hand_computed_projection():
    # Unit cube [-1, 1]^3 seen head-on from z = 4 with a 60 degree field of view: the front
    # face is at depth 3 and spans x in [-1, 1] -> +-f/3 pixels around the centre.
    shape = _single("box", (1, 1, 1))
    cam = look_at_camera(0.0, 0.0, 4.0, math.radians(60))
    size = 64
    buf = render(shape, cam, size)
    f = 0.5 * size / math.tan(math.radians(30))
    assert buf.depth[32, 32] == pytest.approx(3.0, abs=1e-5)
    np.testing.assert_allclose(buf.normal[32, 32], [0, 0, 1], atol=1e-6)
    cols = np.flatnonzero(buf.mask[32])
    # pixel centres c + 0.5 inside |x - 32| <= f / 3
    expected = np.flatnonzero(np.abs(np.arange(size) + 0.5 - 32) <= f / 3)
    np.testing.assert_array_equal(cols, expected)
    # canonical coordinate on the front face is (x, y, 1)
    assert buf.part_coord[32, 32, 2] == pytest.approx(1.0)
    assert buf.part_id[32, 32] == 1 and buf.part_id[0, 0] == 0


def test_render_sphere_and_frustum_depth():
    cam = look_at_camera(0.0, 0.0, 5.0, math.radians(40))
    buf = render(_single("ellipsoid", (0.5, 0.5, 0.5)), cam, 33)
    assert buf.depth[16, 16] == pytest.approx(4.5, abs=2e-3)  # sphere of radius .5 at 5
    # A cone (r1 = 0) seen from the side: at mid height its radius is half the base radius.
    buf = render(_single("frustum", (1, 1, 1), r0=1.0, r1=0.0), cam, 129)
    row = 64  # y = 0 -> radius 0.5 at depth 4.5 along the centre column
    assert buf.depth[row, 64] == pytest.approx(5.0 - 0.5, abs=5e-3)


def test_ray_caster_shortcuts_match_numpy_bit_for_bit():
    # The renderer's records are byte-identical for a seed: its float shortcuts must perform
    # NumPy's operations in NumPy's order.
    from sketch_tf.data.synthetic import geometry as g

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 500, 3)) * 10.0 ** rng.uniform(-3, 3, size=(2, 500, 3))
    assert g._dot3(a, b).tobytes() == (a * b).sum(1).tobytes()
    assert g._norm3(a).tobytes() == np.linalg.norm(a, axis=1).tobytes()
    a[::7, 1] = np.nan
    assert g._clip(a, -1.0, 1.0).tobytes() == np.clip(a, -1, 1).tobytes()
    for u, v in zip(rng.normal(size=(50, 3)), rng.normal(size=(50, 3)), strict=True):
        assert g._cross(u, v).tobytes() == np.cross(u, v).tobytes()
    cam = random_camera(rng)
    first = [v.copy() for v in cam.basis()]
    assert all(x is y for x, y in zip(cam.basis(), cam.basis(), strict=True))  # memoised
    cam.eye = cam.eye + np.array([0.0, 0.5, 0.0])  # a moved camera gets a new basis
    assert not np.array_equal(cam.basis()[2], first[2])


def test_torus_hit_lies_on_surface():
    cam = look_at_camera(0.3, 0.6, 4.0, math.radians(45))
    part = Part("p", 1, "torus", (1, 1, 1), np.eye(3), (0, 0, 0), minor=0.3)
    buf = render(Shape("t", ["p"], [part]), cam, 48)
    ys, xs = np.nonzero(buf.mask)
    assert len(ys) > 100
    # Back-project the hit pixels and check the torus equation.
    right, up, fwd = cam.basis()
    f = cam.focal(48)
    dx = (xs + 0.5 - 24) / f
    dy = -(ys + 0.5 - 24) / f
    d = buf.depth[ys, xs][:, None].astype(np.float64)
    p = cam.eye + d * (dx[:, None] * right + dy[:, None] * up + fwd)
    q = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 1
    assert np.abs(np.sqrt(q**2 + p[:, 1] ** 2) - 0.3).max() < 1e-3


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(7)
    out = []
    for cat in ("chair", "airplane", "mug", "car", "shelf"):
        out.append(render(make_shape(cat, rng), random_camera(rng), 128))
    return out


def test_line_drawings_are_dark_strokes_on_white(views):
    rng = np.random.default_rng(0)
    for buf in views:
        img = line_drawing(buf, rng)
        assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
        g = img[..., 0]
        coverage = (g < 128).mean()
        assert 0.005 < coverage < 0.25, coverage
        # far from the object the paper is pure white
        far = ~ndimage.binary_dilation(buf.mask, iterations=12)
        assert far.any() and (g[far] == 255).all()
        # strokes sit on the object's outline: most dark pixels are near the silhouette
        near = ndimage.binary_dilation(buf.mask, iterations=4)
        assert near[g < 128].mean() > 0.95


def _style_features(img):
    x = img.astype(np.float32) / 255
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    gray = x.mean(-1)
    hf = np.abs(np.diff(gray, axis=1)).mean() + np.abs(np.diff(gray, axis=0)).mean()
    q = (img // 32).reshape(-1, 3)
    n_colours = len(np.unique(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]))
    return np.array(
        [
            sat.mean(),
            (sat < 0.05).mean(),
            (gray < 0.15).mean(),
            (gray > 0.95).mean(),
            hf * 10,
            np.log(n_colours) / 3,
            gray.std(),
        ]
    )


def test_styles_are_measurably_distinct(views):
    # Nearest-centroid classification on simple image statistics: centroids from 3 views,
    # evaluated on 2 other views; every style must be recognised.
    rng = np.random.default_rng(3)
    feats = {s: [_style_features(stylize(b, s, rng)) for b in views] for s in STYLES}
    centroids = np.stack([np.mean(feats[s][:3], 0) for s in STYLES])
    correct = 0
    for i, s in enumerate(STYLES):
        for f in feats[s][3:]:
            correct += int(np.argmin(np.linalg.norm(centroids - f, axis=1)) == i)
    assert correct >= 13, f"{correct}/14 held-out style images classified"
    with pytest.raises(ValueError, match="unknown style"):
        stylize(views[0], "crayon", rng)
    ph = photo(views[0], rng)
    assert ph.shape == (128, 128, 3) and ph.dtype == np.uint8 and ph.std() > 5


def test_semantic_points_are_fixed_per_category():
    a_ids, a_c = semantic_points("chair", 64)
    b_ids, b_c = semantic_points("chair", 64)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_array_equal(a_c, b_c)
    assert a_ids.min() >= 1 and a_ids.max() <= len(CATEGORY_PROGRAMS["chair"][1])


@pytest.mark.parametrize("category", ["chair", "airplane", "mug", "rocket"])
def test_correspondence_pairs_are_same_semantic_point_and_visible(category):
    rng = np.random.default_rng(11)
    pair = correspondence_pair(category, rng, size=160, n_points=None)
    ids = pair["point_ids"]
    assert len(ids) >= 5
    part_ids, coords = semantic_points(category, 256)
    for side in ("a", "b"):
        buf, shape, pts = pair[f"buffers_{side}"], pair[f"shape_{side}"], pair[f"points_{side}"]
        pix = np.floor(pts).astype(int)
        # the pixel shows the point's own part ...
        np.testing.assert_array_equal(buf.part_id[pix[:, 1], pix[:, 0]], part_ids[ids])
        # ... at the point's depth (independent re-projection of the semantic 3D point)
        world = np.stack(
            [
                canonical_to_world(shape.part(shape.part_names[pid - 1]), c[None])[0]
                for pid, c in zip(part_ids[ids], coords[ids], strict=True)
            ]
        )
        xy, z = project(buf.camera, world, 160)
        np.testing.assert_allclose(xy, pts, atol=1e-3)
        zb = buf.depth[pix[:, 1], pix[:, 0]]
        assert np.all(np.abs(zb - z) < 0.01 * z + 2e-3)
        # and the surface point seen at that pixel (back-projected from the depth buffer) is
        # the semantic point, up to the pixel footprint
        right, up, fwd = buf.camera.basis()
        f = buf.camera.focal(160)
        ray = ((pix[:, :1] + 0.5 - 80) / f) * right - ((pix[:, 1:] + 0.5 - 80) / f) * up + fwd
        seen = buf.camera.eye + zb[:, None] * ray
        footprint = z / f
        ratio = np.linalg.norm(seen - world, axis=1) / footprint
        assert np.median(ratio) < 1.0 and ratio.max() < 10.0
    for key in ("image_a", "image_b"):
        assert pair[key].shape == (160, 160, 3) and pair[key].dtype == np.uint8


def test_obj_and_ply_loaders(tmp_path):
    obj = tmp_path / "quad.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\ng a\nf 1/1 2/2 3/3 4/4\ng b\nf -4 -2 -1\n")
    m = load_obj(obj)
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    np.testing.assert_array_equal(m.groups, [0, 0, 1])
    np.testing.assert_array_equal(m.face_source, [0, 0, 1])
    ply = tmp_path / "tri.ply"
    ply.write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
        "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    )
    p = load_ply(ply)
    np.testing.assert_array_equal(p.faces, [[0, 1, 2]])
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nf 1 x 2\n")
    with pytest.raises(ValueError, match="bad.obj:2"):
        load_obj(bad)


def test_rasteriser_matches_ray_caster_on_a_square():
    # A square [-1, 1]^2 at z = 1 as two triangles vs the front face of the analytic unit box.
    v = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float)
    mesh = Mesh(v, np.array([[0, 1, 2], [0, 2, 3]]), np.zeros(2, np.int32), np.arange(2))
    cam = look_at_camera(0.0, 0.0, 4.0, math.radians(60))
    mb = render_mesh(mesh, cam, 64)
    bb = render(_single("box", (1, 1, 1)), cam, 64)
    np.testing.assert_array_equal(mb.mask, bb.mask)
    np.testing.assert_allclose(mb.depth[mb.mask], bb.depth[bb.mask], atol=1e-5)
    xy, vis = visible_points(mb, np.array([[0.5, 0.5, 1.0], [0.5, 0.5, 0.0]]))
    assert vis.tolist() == [True, False]  # the second is behind the square


@pytest.mark.shared_data
def test_real_meshes_render_and_keypoints_land_on_the_drawing(shared_data):
    meshes = shared_data / "meshes"
    cam = look_at_camera(0.6, 0.35, 2.8, math.radians(40))
    for name in ("spot.obj", "cow.obj", "teapot.obj", "suzanne.obj"):
        m, _, _ = load_mesh(meshes / name).normalized()
        buf = render_mesh(m, cam, 96)
        assert 0.05 < buf.mask.mean() < 0.7, name
        ink = line_drawing(buf, np.random.default_rng(0))[..., 0] < 128
        assert 0.005 < ink.mean() < 0.3, name
    chair = meshes / "keypointnet_chair"
    kp = json.loads((chair / "keypoints.json").read_text())["keypoints"]
    face = np.array([k["mesh_info"]["face_index"] for k in kp])
    uv = np.array([k["mesh_info"]["face_uv"] for k in kp])
    xyz = np.array([k["xyz"] for k in kp])
    raw = load_mesh(chair / "model_normalized.obj")
    np.testing.assert_allclose(raw.face_points(face, uv), xyz, atol=1e-6)
    m, _, _ = raw.normalized()
    n_visible = 0
    for az in (0.5, 2.5, -2.0):
        buf = render_mesh(m, look_at_camera(az, 0.4, 2.8, math.radians(40)), 256)
        xy, vis = visible_points(buf, m.face_points(face, uv))
        ink = line_drawing(buf, np.random.default_rng(1))[..., 0] < 160
        dist = ndimage.distance_transform_edt(~ink)
        pix = np.floor(xy[vis]).astype(int)
        assert buf.mask[pix[:, 1], pix[:, 0]].all()
        # chair keypoints are corners and leg ends: they lie on (near) the drawn lines
        assert np.median(dist[pix[:, 1], pix[:, 0]]) <= 4.0
        n_visible += int(vis.sum())
    assert n_visible >= 10


@pytest.mark.shared_data
def test_mesh_views_correspond_by_surface_identity(shared_data):
    m, _, _ = load_mesh(shared_data / "meshes" / "spot.obj").normalized()
    rng = np.random.default_rng(0)
    fi, bary = m.sample_surface(rng, 400)
    pts = m.face_points(fi, bary)
    a = render_mesh(m, look_at_camera(0.3, 0.3, 2.8, 0.7), 128)
    b = render_mesh(m, look_at_camera(1.1, 0.5, 2.8, 0.7), 128)
    xa, va = visible_points(a, pts)
    xb, vb = visible_points(b, pts)
    both = va & vb
    assert both.sum() > 50
    # surface identity: the pixel's triangle is the sampled one for nearly all visible points
    for buf, xy in ((a, xa), (b, xb)):
        pix = np.floor(xy[both]).astype(int)
        same = buf.face_index[pix[:, 1], pix[:, 0]] == fi[both]
        near = np.linalg.norm(
            m.face_points(
                buf.face_index[pix[:, 1], pix[:, 0]], buf.barycentric[pix[:, 1], pix[:, 0]]
            )
            - pts[both],
            axis=1,
        )
        assert (same | (near < 0.03)).mean() > 0.97
