"""Triangle meshes: OBJ / PLY loading and a vectorised NumPy z-buffer rasteriser.

The rasteriser produces the same `Buffers` as the analytic ray caster, so line drawings,
photos and styles work unchanged on real meshes. Surface identity is kept per pixel (triangle
index and perspective-correct barycentric coordinates), which gives exact correspondences
across views of one mesh and lets annotated points (KeypointNet: face index + barycentric
coordinates) be projected and checked for visibility.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np

from sketch_tf.data.synthetic.geometry import Buffers, Camera, project


@dataclasses.dataclass
class Mesh:
    """A triangle mesh.

    Attributes:
      vertices: (V, 3) float64 positions.
      faces: (F, 3) int64 vertex indices (polygons are fan-triangulated on load; `face_source`
        maps each triangle to the polygon's index in the file).
      groups: (F,) int32 group index (OBJ `g`/`o` order, 0 when none), used as the part id - 1.
      face_source: (F,) int64 index of the file polygon each triangle came from.
      path: where it was loaded from ("" for in-memory meshes).
    """

    vertices: np.ndarray
    faces: np.ndarray
    groups: np.ndarray
    face_source: np.ndarray
    path: str = ""

    def normalized(self, radius: float = 0.9) -> tuple[Mesh, float, np.ndarray]:
        """Copy centred on its bounding box and scaled into a sphere of `radius`.

        Returns the mesh, the scale factor and the offset (new = old * factor + offset).
        """
        lo, hi = self.vertices.min(0), self.vertices.max(0)
        centre = 0.5 * (lo + hi)
        extent = float(np.linalg.norm(self.vertices - centre, axis=1).max())
        factor = radius / max(extent, 1e-12)
        offset = -centre * factor
        out = dataclasses.replace(self, vertices=self.vertices * factor + offset)
        return out, factor, offset

    def face_points(self, face_index: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(N, 3) points from triangle indices (N,) and barycentric weights (N, 3)."""
        tri = self.vertices[self.faces[np.asarray(face_index)]]
        return (np.asarray(bary, np.float64)[..., None] * tri).sum(-2)

    def sample_surface(self, rng: np.random.Generator, n: int):
        """Area-weighted random surface points: (face_index (n,), barycentric (n, 3))."""
        tri = self.vertices[self.faces]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        fi = rng.choice(len(self.faces), size=n, p=area / area.sum())
        u, v = rng.uniform(size=n), rng.uniform(size=n)
        flip = u + v > 1
        u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
        return fi, np.stack([1 - u - v, u, v], 1)


def _fan(poly: list[int]) -> list[tuple[int, int, int]]:
    return [(poly[0], poly[i], poly[i + 1]) for i in range(1, len(poly) - 1)]


def load_obj(path: str | Path) -> Mesh:
    """Read vertices and polygon faces of a Wavefront OBJ file (textures/normals ignored).

    Polygons are fan-triangulated; negative (relative) indices are supported.

    Raises:
      ValueError naming the file and line for malformed content.
    """
    path = Path(path)
    verts, faces, groups, source = [], [], [], []
    group_ids: dict[str, int] = {}
    current = 0
    n_poly = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            tag = parts[0]
            try:
                if tag == "v":
                    verts.append([float(x) for x in parts[1:4]])
                elif tag == "f":
                    idx = []
                    for tok in parts[1:]:
                        i = int(tok.split("/")[0])
                        idx.append(i - 1 if i > 0 else len(verts) + i)
                    if len(idx) < 3:
                        raise ValueError("face with fewer than 3 vertices")
                    for tri in _fan(idx):
                        faces.append(tri)
                        groups.append(current)
                        source.append(n_poly)
                    n_poly += 1
                elif tag in ("g", "o"):
                    name = " ".join(parts[1:]) or "default"
                    current = group_ids.setdefault(name, len(group_ids))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: cannot parse {line.strip()!r}: {e}") from e
    if not verts or not faces:
        raise ValueError(f"{path}: expected 'v' and 'f' lines, found {len(verts)} / {len(faces)}")
    faces_a = np.asarray(faces, np.int64)
    if faces_a.min() < 0 or faces_a.max() >= len(verts):
        raise ValueError(f"{path}: face index out of range 1..{len(verts)}")
    g = np.asarray(groups, np.int32)
    g -= g.min()
    return Mesh(np.asarray(verts, np.float64), faces_a, g, np.asarray(source, np.int64), str(path))


_PLY_TYPES = {
    "char": "b", "uchar": "B", "int8": "b", "uint8": "B", "short": "h", "ushort": "H",
    "int16": "h", "uint16": "H", "int": "i", "uint": "I", "int32": "i", "uint32": "I",
    "float": "f", "float32": "f", "double": "d", "float64": "d",
}  # fmt: skip


def _ply_ascii_reader(body: bytes):
    """`read(prop)` returning the next value (or list, for a list property) of an ascii body."""
    tokens = body.split()
    pos = 0

    def read(prop):
        nonlocal pos
        if prop[0] == "list":
            k = int(tokens[pos])
            values = [float(t) for t in tokens[pos + 1 : pos + 1 + k]]
            pos += 1 + k
            return values
        value = float(tokens[pos])
        pos += 1
        return value

    return read


def _ply_binary_reader(body: bytes, order: str):
    """`read(prop)` like `_ply_ascii_reader` for a binary body of byte order `order` (< or >)."""
    pos = 0

    def unpack(t: str, k: int = 1) -> tuple:
        nonlocal pos
        values = struct.unpack_from(order + t * k, body, pos)
        pos += struct.calcsize(t) * k
        return values

    def read(prop):
        if prop[0] == "list":
            (k,) = unpack(_PLY_TYPES[prop[1]])
            return list(unpack(_PLY_TYPES[prop[2]], k))
        return unpack(_PLY_TYPES[prop[0]])[0]

    return read


def _ply_vertices_faces(elements, read) -> tuple[np.ndarray | None, list[list[int]]]:
    """Reads every element in file order; returns vertex (V, 3) x, y, z and face index lists.

    elements: [name, count, properties] from the header; read: a `_ply_*_reader` of the body.
    The vertices are None and the faces empty when the file has no such element.
    """
    verts, faces = None, []
    for name, count, props in elements:
        rows = [[read(prop) for prop in props] for _ in range(count)]
        if name == "vertex":
            names = [pr[-1] for pr in props]
            verts = np.array([[r[names.index(a)] for a in "xyz"] for r in rows], np.float64)
        elif name == "face":
            faces = [[int(x) for x in r[0]] for r in rows]
    return verts, faces


def load_ply(path: str | Path) -> Mesh:
    """Read a PLY file (ascii or binary little/big endian): vertex x, y, z and face lists."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    body = data[data.index(b"\n", end) + 1 :]
    fmt, elements = "ascii", []
    for line in header:
        p = line.split()
        if not p:
            continue
        if p[0] == "format":
            fmt = p[1]
        elif p[0] == "element":
            elements.append([p[1], int(p[2]), []])
        elif p[0] == "property":
            elements[-1][2].append(p[1:])
    if fmt == "ascii":
        read = _ply_ascii_reader(body)
    else:
        read = _ply_binary_reader(body, "<" if fmt == "binary_little_endian" else ">")
    verts, faces = _ply_vertices_faces(elements, read)
    if verts is None or not faces:
        raise ValueError(f"{path}: PLY without vertex or face elements")
    tris, source = [], []
    for i, poly in enumerate(faces):
        for tri in _fan(poly):
            tris.append(tri)
            source.append(i)
    f = np.asarray(tris, np.int64)
    return Mesh(verts, f, np.zeros(len(f), np.int32), np.asarray(source, np.int64), str(path))


def load_mesh(path: str | Path) -> Mesh:
    """Load an `.obj` or `.ply` file by extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".obj":
        return load_obj(path)
    if suffix == ".ply":
        return load_ply(path)
    raise ValueError(f"{path}: unsupported mesh format {suffix!r} (expected .obj or .ply)")


def render_mesh(mesh: Mesh, camera: Camera, size: int = 256, chunk: int = 4_000_000) -> Buffers:
    """Rasterise a triangle mesh with a z-buffer (both sides of every triangle are drawn).

    Every triangle enumerates the pixel centres of its screen bounding box in one flat
    vectorised batch (`chunk` candidates at a time), keeps those inside it (edge functions),
    interpolates 1/depth linearly in screen space (perspective-correct), and the nearest
    candidate per pixel wins.

    Args:
      mesh: the mesh in world coordinates (normalise it to the unit sphere first).
      camera: the view; size: image side in pixels.

    Returns:
      `Buffers` with face normals turned towards the camera, part_id = group + 1,
      part_coord = the surface point's world position / 0.9 (surface identity), and
      `face_index` (-1 on background) and `barycentric`.
    """
    xy, z = project(camera, mesh.vertices, size)
    tri_xy = xy[mesh.faces]  # (F, 3, 2)
    tri_z = z[mesh.faces]
    keep = np.flatnonzero(tri_z.min(1) > 1e-3)
    tri_xy, tri_z = tri_xy[keep], tri_z[keep]
    cmin = np.clip(np.ceil(tri_xy[..., 0].min(1) - 0.5), 0, size).astype(np.int64)
    cmax = np.clip(np.floor(tri_xy[..., 0].max(1) - 0.5), -1, size - 1).astype(np.int64)
    rmin = np.clip(np.ceil(tri_xy[..., 1].min(1) - 0.5), 0, size).astype(np.int64)
    rmax = np.clip(np.floor(tri_xy[..., 1].max(1) - 0.5), -1, size - 1).astype(np.int64)
    w = np.maximum(cmax - cmin + 1, 0)
    h = np.maximum(rmax - rmin + 1, 0)
    counts = w * h
    a, b, c = tri_xy[:, 0], tri_xy[:, 1], tri_xy[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = (counts > 0) & (np.abs(area) > 1e-12)
    best_d = np.full(size * size, np.inf)
    best_f = np.full(size * size, -1, np.int64)
    best_b = np.zeros((size * size, 3))
    # Split the triangles into chunks of about `chunk` candidate pixels.
    idx_all = np.flatnonzero(ok)
    csum = np.cumsum(counts[idx_all])
    starts = np.searchsorted(csum, np.arange(0, csum[-1] if len(csum) else 0, chunk), "right")
    bounds = list(starts) + [len(idx_all)]
    for s0, s1 in zip(bounds[:-1], bounds[1:], strict=True):
        idx = idx_all[s0:s1]
        if len(idx) == 0:
            continue
        cnt = counts[idx]
        fid = np.repeat(idx, cnt)
        off = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        px = cmin[fid] + off % w[fid]
        py = rmin[fid] + off // w[fid]
        qx, qy = px + 0.5, py + 0.5
        ax, ay = a[fid, 0], a[fid, 1]
        bx, by = b[fid, 0], b[fid, 1]
        cx, cy = c[fid, 0], c[fid, 1]
        ar = area[fid]
        w0 = ((bx - qx) * (cy - qy) - (by - qy) * (cx - qx)) / ar
        w1 = ((cx - qx) * (ay - qy) - (cy - qy) * (ax - qx)) / ar
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        fid, px, py = fid[inside], px[inside], py[inside]
        bw = np.stack([w0[inside], w1[inside], w2[inside]], 1) / tri_z[fid]
        inv_z = bw.sum(1)
        depth = 1.0 / inv_z
        bary = bw / inv_z[:, None]
        pix = py * size + px
        order = np.lexsort((depth, pix))
        pix_s = pix[order]
        first = np.ones(len(order), bool)
        first[1:] = pix_s[1:] != pix_s[:-1]
        sel = order[first]
        pix_u = pix[sel]
        better = depth[sel] < best_d[pix_u]
        sel, pix_u = sel[better], pix_u[better]
        best_d[pix_u] = depth[sel]
        best_f[pix_u] = keep[fid[sel]]
        best_b[pix_u] = bary[sel]
    mask = best_f >= 0
    face = np.where(mask, best_f, 0)
    tri = mesh.vertices[mesh.faces[face]]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    pts = (best_b[..., None] * tri).sum(1)
    # Turn normals towards the camera so both sides of open surfaces shade alike.
    facing = ((pts - camera.eye) * n).sum(1) > 0
    n[facing] *= -1
    n[~mask] = 0
    pts[~mask] = 0
    part = np.where(mask, mesh.groups[face] + 1, 0).clip(0, 255).astype(np.uint8)
    buf = Buffers(
        depth=best_d.reshape(size, size).astype(np.float32),
        normal=n.reshape(size, size, 3).astype(np.float32),
        part_id=part.reshape(size, size),
        part_coord=(pts / 0.9).reshape(size, size, 3).astype(np.float32),
        mask=mask.reshape(size, size),
        camera=camera,
        face_index=np.where(mask, best_f, -1).reshape(size, size).astype(np.int32),
        barycentric=best_b.reshape(size, size, 3).astype(np.float32),
    )
    return buf


def visible_points(
    buffers: Buffers, points: np.ndarray, rel_tol: float = 0.01, abs_tol: float = 2e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into a rendered view and test them against its depth buffer.

    Args:
      buffers: the view's render output.
      points: (N, 3) world points on the rendered surface.
      rel_tol, abs_tol: a point is visible when it lies inside the image and its depth is within
        `abs_tol + rel_tol * depth` (world units) of the depth buffer at its pixel.

    Returns:
      xy (N, 2) float64 pixel coordinates and visible (N,) bool.
    """
    size = buffers.size
    xy, z = project(buffers.camera, points, size)
    pix = np.floor(xy).astype(np.int64)
    inside = (pix >= 0).all(1) & (pix < size).all(1) & (z > 1e-3)
    pc = np.clip(pix, 0, size - 1)
    zb = buffers.depth[pc[:, 1], pc[:, 0]].astype(np.float64)
    visible = inside & np.isfinite(zb) & (np.abs(zb - z) <= abs_tol + rel_tol * z)
    return xy, visible
