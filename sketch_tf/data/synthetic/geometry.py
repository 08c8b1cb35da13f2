"""Analytic part-based shapes, cameras and a vectorised NumPy ray caster.

World frame: right-handed, y up; shapes are normalised to fit in the unit sphere around the
origin. Every part is an analytic primitive living in its own *canonical* frame (a unit box,
unit sphere, unit frustum along y, or a torus around y), mapped to the world by a per-axis
scale, a rotation and a translation. A surface point of a part is identified by its
*canonical coordinate* (3 floats in [-1, 1]) that does not depend on the instance's
proportions, so the same (part, canonical coordinate) is the same semantic point on every
instance of a category.

Canonical coordinates per primitive kind:
  box       the point in the unit cube [-1, 1]^3 (one component is +-1 on the surface).
  ellipsoid the point on the unit sphere.
  frustum   side: (x / r(y), y, z / r(y)) with r(y) the radius at height y; caps:
            (x / r_cap, +-1, z / r_cap). Independent of the taper.
  torus     (major angle / pi, minor angle / pi, 0); the tube lies around the y axis.

Cameras are pinhole with the record schema's pixel convention: x to the right, y down, origin
at the top-left corner of the image (the centre of pixel (col, row) is (col + 0.5, row + 0.5)),
and
"depth" is the distance along the viewing axis (not along the ray), so a world point
projects with `project(camera, points, size)` onto the pixel whose depth buffer value equals
its depth when it is visible.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

KINDS = ("box", "ellipsoid", "frustum", "torus")
_EPS = 1e-6
_BIG = np.finfo(np.float64).max
# (8, 3) signs of the corners of a box, in `Part.corners` order.
_CORNER_SIGNS = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)


def rot_x(a: float) -> np.ndarray:
    """3x3 float64 rotation by `a` radians about the x axis."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rot_y(a: float) -> np.ndarray:
    """3x3 float64 rotation by `a` radians about the y axis."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rot_z(a: float) -> np.ndarray:
    """3x3 float64 rotation by `a` radians about the z axis."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


@dataclasses.dataclass
class Part:
    """One analytic primitive of a shape.

    Attributes:
      name: semantic part name (e.g. "seat"); `part_id` is its 1-based index in the category's
        part list (0 is background in the part-id buffer).
      kind: one of `KINDS`.
      scale: (3,) per-axis scale from canonical to local (world units, before rotation).
      rotation: (3, 3) local-to-world rotation.
      center: (3,) world position of the canonical origin.
      r0, r1: frustum radii (relative, in [0, 1]) at canonical y = -1 and y = +1.
      minor: torus tube radius relative to the unit major radius.
    """

    name: str
    part_id: int
    kind: str
    scale: np.ndarray
    rotation: np.ndarray
    center: np.ndarray
    r0: float = 1.0
    r1: float = 1.0
    minor: float = 0.25

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"part {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        self.scale = np.asarray(self.scale, np.float64).reshape(3)
        self.rotation = np.asarray(self.rotation, np.float64).reshape(3, 3)
        self.center = np.asarray(self.center, np.float64).reshape(3)
        if np.any(self.scale <= 0):
            raise ValueError(f"part {self.name!r}: scale must be positive, got {self.scale}")

    def canonical_extent(self) -> np.ndarray:
        """(3,) half-size of the canonical bounding box."""
        if self.kind == "torus":
            return np.array([1 + self.minor, self.minor, 1 + self.minor])
        return np.ones(3)

    def corners(self) -> np.ndarray:
        """(8, 3) world corners of the part's oriented bounding box."""
        e = self.canonical_extent() * self.scale
        return (_CORNER_SIGNS * e) @ self.rotation.T + self.center

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """World centre (3,) and radius of a sphere enclosing the part."""
        e = self.canonical_extent() * self.scale
        return self.center, float(np.linalg.norm(e))

    def to_world(self, canon_points: np.ndarray) -> np.ndarray:
        """(N, 3) canonical-space points -> (N, 3) world points."""
        return (canon_points * self.scale) @ self.rotation.T + self.center

    def transformed(self, factor: float, offset: np.ndarray) -> Part:
        """Copy with world coordinates mapped by p -> factor * p + offset."""
        return dataclasses.replace(
            self, scale=self.scale * factor, center=self.center * factor + offset
        )


@dataclasses.dataclass
class Shape:
    """A part-based object: `parts` (present ones only) and the category's full part list."""

    category: str
    part_names: list[str]
    parts: list[Part]

    def part(self, name: str) -> Part | None:
        """The present part called `name`, or None when the instance lacks it."""
        for p in self.parts:
            if p.name == name:
                return p
        return None

    def normalized(self, radius: float = 0.9) -> Shape:
        """Copy centred on its bounding box and scaled to fit a sphere of `radius`."""
        corners = np.concatenate([p.corners() for p in self.parts])
        lo, hi = corners.min(0), corners.max(0)
        centre = 0.5 * (lo + hi)
        extent = float(np.linalg.norm(corners - centre, axis=1).max())
        factor = radius / max(extent, _EPS)
        parts = [p.transformed(factor, -centre * factor) for p in self.parts]
        return Shape(self.category, list(self.part_names), parts)


# ----------------------------------------------------------------------------------------
# Canonical surface parametrisation (semantic points)
# ----------------------------------------------------------------------------------------


def frustum_radius(y: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Relative radius of a frustum at canonical height y in [-1, 1]."""
    return 0.5 * (1 - y) * r0 + 0.5 * (1 + y) * r1


def sample_canonical(part: Part, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) canonical coordinates of points spread over the part's surface.

    Only the part kind (and for frustum caps, whether the cap exists) matters, so the result
    is meaningful on every instance of a category.
    """
    if part.kind == "box":
        u = rng.uniform(-1, 1, size=(n, 3))
        axis = rng.integers(0, 3, size=n)
        u[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
        return u
    if part.kind == "ellipsoid":
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if part.kind == "frustum":
        a = rng.uniform(-np.pi, np.pi, size=n)
        y = rng.uniform(-1, 1, size=n)
        out = np.stack([np.cos(a), y, np.sin(a)], 1)
        # A quarter of the points go on the caps (discs of radius 1 in canonical coordinates).
        cap = rng.uniform(size=n) < 0.25
        rho = np.sqrt(rng.uniform(size=n))
        side = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
        out[cap] = np.stack([rho * np.cos(a), side, rho * np.sin(a)], 1)[cap]
        return out
    a = rng.uniform(-1, 1, size=n)
    b = rng.uniform(-1, 1, size=n)
    return np.stack([a, b, np.zeros(n)], 1)


def canonical_to_world(part: Part, coords: np.ndarray) -> np.ndarray:
    """(N, 3) canonical coordinates on the part's surface -> (N, 3) world points."""
    c = np.asarray(coords, np.float64)
    if part.kind in ("box", "ellipsoid"):
        p = c
    elif part.kind == "frustum":
        y = c[:, 1]
        on_cap = np.abs(np.abs(y) - 1) < 1e-9
        r_side = frustum_radius(y, part.r0, part.r1)
        r_cap = np.where(y < 0, part.r0, part.r1)
        r = np.where(on_cap, r_cap, r_side)
        p = np.stack([c[:, 0] * r, y, c[:, 2] * r], 1)
    else:
        a, b = c[:, 0] * np.pi, c[:, 1] * np.pi
        ring = 1 + part.minor * np.cos(b)
        p = np.stack([ring * np.cos(a), part.minor * np.sin(b), ring * np.sin(a)], 1)
    return part.to_world(p)


def _dot3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) row-wise dot products of (N, 3) float arrays: `(a * b).sum(1)`, the same IEEE
    operations in the same order ((a0 b0 + a1 b1) + a2 b2, as NumPy reduces an axis of 3),
    without the cost of a reduction over a short axis."""
    return (a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]) + a[:, 2] * b[:, 2]


def _clip(x: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """`np.clip(x, lo, hi, out=out)` of a float array (the same values, NaN included) without
    the Python-level overhead of np.clip, which shows on the ray caster's small arrays."""
    return np.minimum(np.maximum(x, lo, out=out), hi, out=out)


def _norm3(a: np.ndarray) -> np.ndarray:
    """(N,) row norms of an (N, 3) float array, as `np.linalg.norm(a, axis=1)` computes them."""
    return np.sqrt(_dot3(a, a))


# ----------------------------------------------------------------------------------------
# Ray / primitive intersection in canonical space. o, d: (N, 3) (o: (3,), the rays' common
# origin, for _hit_box and _hit_frustum, whose terms of o alone are then computed once, with
# the same operations); returns t (N,) with inf for a miss, canonical normal (N, 3)
# (unnormalised is fine) and canonical coordinate (N, 3).
# ----------------------------------------------------------------------------------------


def _hit_box(o, d):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-1.0 - o) * inv
        t2 = (1.0 - o) * inv
    tn = np.minimum(t1, t2)
    tf = np.maximum(t1, t2)
    # np.nan_to_num(tn, nan=-inf) and (tf, nan=inf): infinities to the largest finite floats,
    # then NaN (0 * inf) to the given infinity.
    _clip(tn, -_BIG, _BIG, out=tn)
    tn[np.isnan(tn)] = -np.inf
    _clip(tf, -_BIG, _BIG, out=tf)
    tf[np.isnan(tf)] = np.inf
    # Row max / min (only compared below, so the sign a zero would get does not matter).
    t_near = np.maximum(np.maximum(tn[:, 0], tn[:, 1]), tn[:, 2])
    t_far = np.minimum(np.minimum(tf[:, 0], tf[:, 1]), tf[:, 2])
    hit = (t_near <= t_far) & (t_near > _EPS)
    t = np.where(hit, t_near, np.inf)
    axis = tn.argmax(1)
    n = np.zeros(d.shape)
    rows = np.arange(len(d))
    n[rows, axis] = -np.sign(d[rows, axis])
    p = o + d * np.where(hit, t, 0.0)[:, None]
    coord = _clip(p, -1.0, 1.0)
    coord[rows, axis] = n[rows, axis]
    return t, n, coord


def _hit_sphere(o, d):
    a = _dot3(d, d)
    b = _dot3(o, d)
    c = _dot3(o, o) - 1.0
    disc = b * b - a * c
    hit = disc >= 0
    sq = np.sqrt(np.where(hit, disc, 0.0))
    t = (-b - sq) / a
    hit &= t > _EPS
    t = np.where(hit, t, np.inf)
    p = o + d * np.where(hit, t, 0.0)[:, None]
    coord = p / np.maximum(_norm3(p)[:, None], _EPS)
    return t, p, coord


def _hit_frustum(o, d, r0, r1):
    # Side: x^2 + z^2 = (m + k y)^2 with m the mid radius and k the slope, for |y| <= 1.
    m, k = 0.5 * (r0 + r1), 0.5 * (r1 - r0)
    o0, o1, o2 = o.tolist()  # floats; x * x below is the ** 2 NumPy computes on arrays
    ry_o = m + k * o1
    a = d[:, 0] ** 2 + d[:, 2] ** 2 - (k * d[:, 1]) ** 2
    b = o0 * d[:, 0] + o2 * d[:, 2] - ry_o * k * d[:, 1]
    c = o0 * o0 + o2 * o2 - ry_o * ry_o
    n_rays = len(d)
    t_side = np.full(n_rays, np.inf)
    disc = b * b - a * c
    ok = (disc >= 0) & (np.abs(a) > 1e-12)
    sq = np.sqrt(np.where(ok, disc, 0.0))
    safe_a = np.where(ok, a, 1.0)
    for sgn in (-1.0, 1.0):
        t = (-b + sgn * sq) / safe_a
        y = o1 + t * d[:, 1]
        r_at = m + k * y
        good = ok & (t > _EPS) & (np.abs(y) <= 1) & (r_at >= 0)
        t_side = np.where(good & (t < t_side), t, t_side)
    # Caps at y = -1 (radius r0) and y = +1 (radius r1).
    t_cap = np.full(n_rays, np.inf)
    cap_y = np.zeros(n_rays)
    with np.errstate(divide="ignore", invalid="ignore"):
        for yc, rc in ((-1.0, r0), (1.0, r1)):
            if rc <= 0:
                continue
            t = (yc - o1) / d[:, 1]
            x = o0 + t * d[:, 0]
            z = o2 + t * d[:, 2]
            good = np.isfinite(t) & (t > _EPS) & (x * x + z * z <= rc * rc)
            better = good & (t < t_cap)
            t_cap = np.where(better, t, t_cap)
            cap_y = np.where(better, yc, cap_y)
    use_cap = t_cap < t_side
    t = np.where(use_cap, t_cap, t_side)
    p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
    r_side = np.maximum(m + k * p[:, 1], _EPS)
    # Side normal of x^2 + z^2 - (m + k y)^2 = 0 is (x, -k (m + k y), z).
    n_side = np.stack([p[:, 0], -k * r_side, p[:, 2]], 1)
    n_cap = np.stack([np.zeros(n_rays), cap_y, np.zeros(n_rays)], 1)
    n = np.where(use_cap[:, None], n_cap, n_side)
    r_cap = np.where(cap_y < 0, max(r0, _EPS), max(r1, _EPS))
    r_used = np.where(use_cap, r_cap, r_side)
    y_used = np.where(use_cap, cap_y, _clip(p[:, 1], -1.0, 1.0))
    coord = np.stack(
        [_clip(p[:, 0] / r_used, -1.0, 1.0), y_used, _clip(p[:, 2] / r_used, -1.0, 1.0)], 1
    )
    return t, n, coord


def _torus_sdf(p, minor):
    q = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 1.0
    return np.sqrt(q * q + p[:, 1] ** 2) - minor


def _hit_torus(o, d, minor, steps=64):
    # Sphere tracing on the signed distance, started where the ray enters the bounding sphere.
    norm = _norm3(d)
    du = d / norm[:, None]
    rb = 1.0 + minor
    b = _dot3(o, du)
    c = _dot3(o, o) - rb * rb
    disc = b * b - c
    active = disc > 0
    sq = np.sqrt(np.where(active, disc, 0.0))
    s = np.maximum(-b - sq, 0.0)
    s_end = -b + sq
    active &= s_end > 0
    idx = np.flatnonzero(active)
    s_a, oa, da, end_a = s[idx], o[idx], du[idx], s_end[idx]
    done = np.zeros(len(idx), bool)
    for _ in range(steps):
        dist = _torus_sdf(oa + da * s_a[:, None], minor)
        done |= dist < 1e-4
        s_a = np.where(done, s_a, s_a + dist)
        if np.all(done | (s_a > end_a)):
            break
    hit = done & (s_a <= end_a)
    t = np.full(len(o), np.inf)
    t[idx[hit]] = s_a[hit] / norm[idx[hit]]
    p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
    ring = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2)
    ring_safe = np.maximum(ring, _EPS)
    centre = np.stack([p[:, 0] / ring_safe, np.zeros(len(o)), p[:, 2] / ring_safe], 1)
    n = p - centre
    a = np.arctan2(p[:, 2], p[:, 0])
    bm = np.arctan2(p[:, 1], ring - 1.0)
    coord = np.stack([a / np.pi, bm / np.pi, np.zeros(len(o))], 1)
    return t, n, coord


def intersect_part(part: Part, origin: np.ndarray, dirs: np.ndarray):
    """Intersect world rays with one part.

    Args:
      part: the primitive.
      origin: (3,) ray origin (camera centre), world units.
      dirs: (N, 3) ray directions (any length; t is measured in multiples of it).

    Returns:
      t (N,) float64 (inf where missed), unit world normals (N, 3), canonical coords (N, 3).
    """
    o = ((origin - part.center) @ part.rotation) / part.scale
    d = (dirs @ part.rotation) / part.scale
    if part.kind == "box":
        t, n, coord = _hit_box(o, d)
    elif part.kind == "ellipsoid":
        t, n, coord = _hit_sphere(np.broadcast_to(o, d.shape), d)
    elif part.kind == "frustum":
        t, n, coord = _hit_frustum(o, d, part.r0, part.r1)
    else:
        t, n, coord = _hit_torus(np.broadcast_to(o, d.shape), d, part.minor)
    # Normals transform with the inverse transpose of the scale, then rotate to the world.
    n = (n / part.scale) @ part.rotation.T
    n /= np.maximum(_norm3(n)[:, None], _EPS)
    return t, n, coord


# ----------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`np.cross` of two float64 3-vectors with the same IEEE operations, in the same order
    (a1 b2 - a2 b1, a2 b0 - a0 b2, a0 b1 - a1 b0), without its per-call overhead."""
    a0, a1, a2 = a.tolist()
    b0, b1, b2 = b.tolist()
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


@dataclasses.dataclass
class Camera:
    """Pinhole camera looking at `target` from `eye`.

    Attributes:
      eye, target: (3,) world positions.
      fov: full vertical/horizontal field of view in radians (square images).
      azimuth, elevation: radians, kept for reference (azimuth about +y, elevation above xz).
    """

    eye: np.ndarray
    target: np.ndarray
    fov: float
    azimuth: float = 0.0
    elevation: float = 0.0

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit (right, up, forward) vectors of the camera in world coordinates (read-only
        arrays, computed once per eye and target)."""
        eye = np.asarray(self.eye, float)
        target = np.asarray(self.target, float)
        key = (eye.tobytes(), target.tobytes())
        memo = self.__dict__.get("_basis_memo")
        if memo is not None and memo[0] == key:
            return memo[1]
        fwd = target - eye
        fwd /= np.linalg.norm(fwd)
        world_up = np.array([0.0, 1.0, 0.0])
        if abs(fwd @ world_up) > 0.999:
            world_up = np.array([0.0, 0.0, 1.0])
        right = _cross(fwd, world_up)
        right /= np.linalg.norm(right)
        up = _cross(right, fwd)
        out = (right, up, fwd)
        for v in out:
            v.flags.writeable = False
        # Not a dataclass field: equality, repr and `dataclasses.replace` ignore it.
        self.__dict__["_basis_memo"] = (key, out)
        return out

    def focal(self, size: int) -> float:
        """Focal length in pixels for a `size` x `size` image."""
        return 0.5 * size / math.tan(0.5 * self.fov)


def look_at_camera(
    azimuth: float, elevation: float, distance: float, fov: float, target=(0.0, 0.0, 0.0)
) -> Camera:
    """Camera on a sphere of `distance` around `target` (angles in radians)."""
    target = np.asarray(target, float)
    eye = target + distance * np.array(
        [
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
            math.cos(elevation) * math.cos(azimuth),
        ]
    )
    return Camera(eye=eye, target=target, fov=fov, azimuth=azimuth, elevation=elevation)


def random_camera(
    rng: np.random.Generator,
    azimuth_range=(-math.pi, math.pi),
    elevation_range=(math.radians(5), math.radians(40)),
    fov_range=(math.radians(30), math.radians(50)),
    fill: float = 0.85,
    jitter: float = 0.05,
) -> Camera:
    """A random perspective camera looking at a unit-sphere shape.

    Azimuth and elevation are uniform in the given ranges (radians); the distance is chosen
    so the unit sphere fills about `fill` of the image for the drawn field of view; `jitter`
    (world units) moves the look-at target to decentre the object slightly.
    """
    az = rng.uniform(*azimuth_range)
    el = rng.uniform(*elevation_range)
    fov = rng.uniform(*fov_range)
    distance = 1.0 / math.sin(0.5 * fov * fill) * rng.uniform(0.95, 1.1)
    target = rng.uniform(-jitter, jitter, size=3)
    return look_at_camera(az, el, distance, fov, target)


def project(camera: Camera, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into a `size` x `size` image.

    Args:
      points: (N, 3) world coordinates.

    Returns:
      xy (N, 2) float64 pixel coordinates (x right, y down, pixel (c, r) spans [c, c+1) x
      [r, r+1), so `floor(xy)` is the pixel holding the point) and
      depth (N,) distance along the viewing axis (world units, <= 0 when behind the camera).
    """
    right, up, fwd = camera.basis()
    q = np.asarray(points, float) - camera.eye
    z = q @ fwd
    f = camera.focal(size)
    c = 0.5 * size
    zs = np.where(np.abs(z) > _EPS, z, _EPS)
    x = f * (q @ right) / zs + c
    y = -f * (q @ up) / zs + c
    return np.stack([x, y], 1), z


def _ray_terms(camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The terms of `pixel_rays` for a whole `size` x `size` image: (size, 3) column terms
    x_col * right, (size, 3) row terms y_row * up, and fwd (a ray is x + y + fwd)."""
    right, up, fwd = camera.basis()
    f = camera.focal(size)
    c = 0.5 * size
    steps = np.arange(size) + 0.5 - c
    xs = steps / f
    ys = -steps / f
    return xs[:, None] * right, ys[:, None] * up, fwd


def _rays(terms, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Ray directions ((y1 - y0) * (x1 - x0), 3) of a pixel rectangle from `_ray_terms`."""
    xr, yu, fwd = terms
    dirs = xr[None, x0:x1] + yu[y0:y1, None]
    dirs += fwd
    return dirs.reshape(-1, 3)


def pixel_rays(camera: Camera, size: int, x0=0, y0=0, x1=None, y1=None) -> np.ndarray:
    """World ray directions (H*W, 3) for the pixel rectangle [x0, x1) x [y0, y1).

    Directions are scaled so their component along the viewing axis is 1: the ray parameter
    of a hit is its depth. Each is (x * right + y * up) + fwd with x, y the pixel centre's
    offsets from the image centre over the focal length.
    """
    x1 = size if x1 is None else x1
    y1 = size if y1 is None else y1
    return _rays(_ray_terms(camera, size), x0, y0, x1, y1)


@dataclasses.dataclass
class Buffers:
    """Per-pixel render output for a `size` x `size` view.

    Attributes:
      depth: (H, W) float32, distance along the view axis; inf on background.
      normal: (H, W, 3) float32 unit world normals; 0 on background.
      part_id: (H, W) uint8, 1-based part index in the category's part list; 0 background.
      part_coord: (H, W, 3) float32 canonical coordinates of the visible surface point.
      mask: (H, W) bool foreground.
      camera: the camera used.
      light_dir: (3,) unit world direction towards the key light (for shading; camera-relative).
      face_index: (H, W) int32 triangle index for meshes (-1 elsewhere) or None.
      barycentric: (H, W, 3) float32 barycentric coordinates in that triangle, or None.
    """

    depth: np.ndarray
    normal: np.ndarray
    part_id: np.ndarray
    part_coord: np.ndarray
    mask: np.ndarray
    camera: Camera
    face_index: np.ndarray | None = None
    barycentric: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.depth.shape[0]

    def view_normal(self) -> np.ndarray:
        """(H, W, 3) normals in camera coordinates (x right, y up, z towards the viewer)."""
        right, up, fwd = self.camera.basis()
        m = np.stack([right, up, -fwd], 1)
        return (self.normal.reshape(-1, 3) @ m).reshape(self.normal.shape).astype(np.float32)


def render(shape: Shape, camera: Camera, size: int = 256) -> Buffers:
    """Ray-cast an analytic shape into per-pixel buffers.

    Each part is intersected only with the rays of the screen rectangle covered by its
    projected oriented bounding box, so the cost scales with covered area, not with parts x pixels.

    Args:
      shape: a `Shape` (world units, ideally normalised to the unit sphere).
      camera: the view.
      size: output side in pixels (square).

    Returns:
      `Buffers` for the view.
    """
    if size < 8:
        raise ValueError(f"render: size must be >= 8 pixels, got {size}")
    depth = np.full((size, size), np.inf)
    normal = np.zeros((size, size, 3))
    part_id = np.zeros((size, size), np.uint8)
    coord = np.zeros((size, size, 3))
    right, up, fwd = camera.basis()
    f = camera.focal(size)
    c = 0.5 * size
    terms = _ray_terms(camera, size)
    for part in shape.parts:
        # Screen rectangle of the part's oriented bounding box (whole image if it straddles
        # the camera plane).
        q = part.corners() - camera.eye
        z = q @ fwd
        if z.min() <= 1e-3:
            x0, y0, x1, y1 = 0, 0, size, size
        else:
            px = f * (q @ right) / z + c
            py = -f * (q @ up) / z + c
            x0, x1 = max(0, math.floor(px.min()) - 1), min(size, math.ceil(px.max()) + 2)
            y0, y1 = max(0, math.floor(py.min()) - 1), min(size, math.ceil(py.max()) + 2)
            if x0 >= x1 or y0 >= y1:
                continue
        dirs = _rays(terms, x0, y0, x1, y1)
        t, n, cc = intersect_part(part, camera.eye, dirs)
        h, w = y1 - y0, x1 - x0
        t = t.reshape(h, w)
        win = depth[y0:y1, x0:x1]
        closer = t < win
        if not closer.any():
            continue
        np.copyto(win, t, where=closer)
        closer3 = closer[..., None]
        np.copyto(normal[y0:y1, x0:x1], n.reshape(h, w, 3), where=closer3)
        np.copyto(coord[y0:y1, x0:x1], cc.reshape(h, w, 3), where=closer3)
        np.copyto(part_id[y0:y1, x0:x1], part.part_id, where=closer)
    mask = np.isfinite(depth)
    return Buffers(
        depth=depth.astype(np.float32),
        normal=normal.astype(np.float32),
        part_id=part_id,
        part_coord=coord.astype(np.float32),
        mask=mask,
        camera=camera,
    )
