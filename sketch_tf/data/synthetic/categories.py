"""Parametric programs for the categories of the synthetic shape world.

Each category has a fixed, ordered list of semantic part names (the part id is the 1-based
index in that list) and a program that draws proportions, optional parts and part shapes from
an `np.random.Generator`. A part name always uses the same primitive kind, so its canonical
coordinates mean the same thing on every instance.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from sketch_tf.data.synthetic.geometry import Part, Shape, rot_x, rot_y, rot_z

I3 = np.eye(3)
# Rotation that maps canonical +y onto world +x (for horizontal cylinders along x) / +z.
Y_TO_X = rot_z(-math.pi / 2)
Y_TO_Z = rot_x(math.pi / 2)


#: Four legs: (part name, x side, z side).
LEGS4 = (("leg_fl", -1, 1), ("leg_fr", 1, 1), ("leg_bl", -1, -1), ("leg_br", 1, -1))


class _Builder:
    """Collects parts for one instance, assigning the category's part ids by name."""

    def __init__(self, category: str, names: list[str]):
        self.category = category
        self.names = names
        self.parts: list[Part] = []

    def _id(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"category {self.category!r} has no part {name!r}")
        return self.names.index(name) + 1

    def box(self, name, center, half, rot=I3):
        self.parts.append(Part(name, self._id(name), "box", half, rot, center))

    def ellipsoid(self, name, center, radii, rot=I3):
        self.parts.append(Part(name, self._id(name), "ellipsoid", radii, rot, center))

    def frustum(self, name, center, radius, half_height, r0=1.0, r1=1.0, rot=I3, squash=1.0):
        """Frustum along the rotated y axis; radius is the largest radius, r0/r1 relative."""
        scale = (radius, half_height, radius * squash)
        self.parts.append(Part(name, self._id(name), "frustum", scale, rot, center, r0, r1))

    def torus(self, name, center, major, minor_rel, rot=I3):
        scale = (major, major, major)
        self.parts.append(Part(name, self._id(name), "torus", scale, rot, center, minor=minor_rel))

    def shape(self) -> Shape:
        return Shape(self.category, list(self.names), self.parts).normalized()


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


# ------------------------------------------------------------------------- furniture


def _chair(rng, b: _Builder):
    w, d = _u(rng, 0.40, 0.60), _u(rng, 0.40, 0.55)
    seat_h, seat_t = _u(rng, 0.40, 0.55), _u(rng, 0.03, 0.07)
    back_h = _u(rng, 0.35, 0.65)
    b.box("seat", (0, seat_h, 0), (w / 2, seat_t / 2, d / 2))
    tilt = _u(rng, 0.0, 0.25)
    back_t = _u(rng, 0.025, 0.05)
    bc = np.array([0, seat_h + seat_t / 2 + back_h / 2, -d / 2 + back_t / 2])
    bc += np.array([0, 0, -math.sin(tilt) * back_h / 2])
    b.box("back", bc, (w / 2 * _u(rng, 0.8, 1.0), back_h / 2, back_t / 2), rot_x(-tilt))
    leg_r = _u(rng, 0.018, 0.035)
    taper = _u(rng, 0.5, 1.0)
    inset = _u(rng, 0.02, 0.06)
    hh = (seat_h - seat_t / 2) / 2
    for name, sx, sz in LEGS4:
        c = (sx * (w / 2 - inset), hh, sz * (d / 2 - inset))
        b.frustum(name, c, leg_r, hh, r0=taper, r1=1.0)
    if rng.uniform() < 0.4:
        ah = _u(rng, 0.15, 0.25)
        for name, sx in (("arm_l", -1), ("arm_r", 1)):
            b.box(name, (sx * (w / 2 + 0.02), seat_h + ah, 0), (0.025, 0.02, d / 2 * 0.9))
    if rng.uniform() < 0.5:
        b.frustum("stretcher", (0, hh * 0.6, d / 2 - inset), leg_r * 0.7, w / 2 - inset, rot=Y_TO_X)


def _table(rng, b: _Builder):
    w, d = _u(rng, 0.8, 1.4), _u(rng, 0.5, 0.9)
    h, t = _u(rng, 0.55, 0.8), _u(rng, 0.03, 0.07)
    if rng.uniform() < 0.35:
        r = _u(rng, 0.35, 0.6)
        b.frustum("top_round", (0, h, 0), r, t / 2, squash=_u(rng, 0.7, 1.0))
        b.frustum("pedestal", (0, (h - t / 2) / 2, 0), _u(rng, 0.03, 0.06), (h - t / 2) / 2)
        b.frustum("foot", (0, 0.02, 0), r * _u(rng, 0.4, 0.7), 0.02, r0=1.0, r1=_u(rng, 0.4, 1.0))
        return
    b.box("top", (0, h, 0), (w / 2, t / 2, d / 2))
    leg = _u(rng, 0.025, 0.05)
    inset = _u(rng, 0.03, 0.1)
    hh = (h - t / 2) / 2
    square = rng.uniform() < 0.5
    for name, sx, sz in LEGS4:
        c = (sx * (w / 2 - inset), hh, sz * (d / 2 - inset))
        if square:
            b.box(name, c, (leg, hh, leg))
        else:
            b.frustum(name, c, leg, hh, r0=_u(rng, 0.5, 1.0))
    if rng.uniform() < 0.5:
        b.box("apron", (0, h - t / 2 - 0.04, 0), (w / 2 - inset, 0.04, d / 2 - inset))


def _bed(rng, b: _Builder):
    w, length = _u(rng, 0.9, 1.6), _u(rng, 1.8, 2.1)
    base_h = _u(rng, 0.15, 0.3)
    b.box("base", (0, base_h / 2 + 0.1, 0), (w / 2, base_h / 2, length / 2))
    mt = _u(rng, 0.12, 0.25)
    b.box("mattress", (0, base_h + 0.1 + mt / 2, 0), (w / 2 * 0.96, mt / 2, length / 2 * 0.97))
    hb = _u(rng, 0.5, 0.9)
    b.box("headboard", (0, hb / 2, -length / 2 - 0.03), (w / 2 + 0.03, hb / 2, 0.03))
    if rng.uniform() < 0.6:
        fb = _u(rng, 0.3, 0.45)
        b.box("footboard", (0, fb / 2, length / 2 + 0.03), (w / 2 + 0.03, fb / 2, 0.03))
    top = base_h + 0.1 + mt
    b.ellipsoid("pillow", (0, top + 0.05, -length / 2 + 0.3), (w * 0.35, 0.06, 0.16))
    if rng.uniform() < 0.5:
        b.box("blanket", (0, top + 0.01, length * 0.15), (w / 2, 0.02, length * 0.33))


def _bench(rng, b: _Builder):
    w, d = _u(rng, 1.0, 1.8), _u(rng, 0.3, 0.5)
    h, t = _u(rng, 0.4, 0.5), _u(rng, 0.03, 0.06)
    b.box("seat", (0, h, 0), (w / 2, t / 2, d / 2))
    hh = (h - t / 2) / 2
    inset = _u(rng, 0.05, 0.2)
    slab = rng.uniform() < 0.5
    for name, sx in (("leg_l", -1), ("leg_r", 1)):
        if slab:
            b.box(name, (sx * (w / 2 - inset), hh, 0), (0.03, hh, d / 2 * 0.9))
        else:
            b.box(name, (sx * (w / 2 - inset), hh, 0), (0.04, hh, 0.04))
    if rng.uniform() < 0.6:
        bh = _u(rng, 0.25, 0.45)
        tilt = _u(rng, 0.0, 0.3)
        b.box("back", (0, h + bh / 2 + 0.05, -d / 2), (w / 2, bh / 2, 0.02), rot_x(-tilt))
    if rng.uniform() < 0.4:
        for name, sx in (("arm_l", -1), ("arm_r", 1)):
            b.box(name, (sx * w / 2, h + 0.15, 0), (0.03, 0.03, d / 2))


def _shelf(rng, b: _Builder):
    w, d, h = _u(rng, 0.6, 1.2), _u(rng, 0.25, 0.4), _u(rng, 0.8, 1.8)
    t = _u(rng, 0.015, 0.035)
    for name, sx in (("side_l", -1), ("side_r", 1)):
        b.box(name, (sx * (w / 2 - t), h / 2, 0), (t, h / 2, d / 2))
    n = int(rng.integers(2, 6))
    for i in range(n):
        y = t + (h - 2 * t) * i / (n - 1)
        b.box(f"board_{i}", (0, y, 0), (w / 2 - 2 * t, t, d / 2))
    if rng.uniform() < 0.5:
        b.box("back", (0, h / 2, -d / 2 + 0.005), (w / 2 - t, h / 2, 0.005))


# ------------------------------------------------------------------------- objects


def _lamp(rng, b: _Builder):
    base_r = _u(rng, 0.12, 0.22)
    base_h = _u(rng, 0.02, 0.05)
    b.frustum("base", (0, base_h / 2, 0), base_r, base_h / 2, r0=1.0, r1=_u(rng, 0.5, 1.0))
    pole_h = _u(rng, 0.6, 1.2)
    b.frustum("pole", (0, base_h + pole_h / 2, 0), _u(rng, 0.01, 0.025), pole_h / 2)
    shade_h = _u(rng, 0.18, 0.35)
    shade_r = _u(rng, 0.15, 0.3)
    top = base_h + pole_h
    b.frustum("shade", (0, top, 0), shade_r, shade_h / 2, r0=1.0, r1=_u(rng, 0.35, 0.9))
    if rng.uniform() < 0.5:
        b.ellipsoid("finial", (0, top + shade_h / 2 + 0.03, 0), (0.025, 0.03, 0.025))
    if rng.uniform() < 0.4:
        b.torus("switch", (0, base_h + 0.1, 0), 0.03, 0.35)


def _mug(rng, b: _Builder):
    r, h = _u(rng, 0.3, 0.45), _u(rng, 0.6, 1.0)
    b.frustum("body", (0, h / 2, 0), r, h / 2, r0=_u(rng, 0.75, 1.0), r1=1.0)
    hr = _u(rng, 0.18, 0.3) * h
    b.torus("handle", (r + hr * 0.4, h * _u(rng, 0.45, 0.55), 0), hr, _u(rng, 0.12, 0.22), Y_TO_Z)
    if rng.uniform() < 0.5:
        b.torus("rim", (0, h, 0), r, _u(rng, 0.03, 0.06))
    if rng.uniform() < 0.4:
        b.frustum("saucer", (0, -0.02, 0), r * _u(rng, 1.5, 2.0), 0.02, r0=0.6, r1=1.0)


def _bottle(rng, b: _Builder):
    r, h = _u(rng, 0.15, 0.3), _u(rng, 0.6, 1.1)
    b.frustum("body", (0, h / 2, 0), r, h / 2, r0=1.0, r1=_u(rng, 0.85, 1.0))
    sh = _u(rng, 0.1, 0.25)
    nr = _u(rng, 0.06, 0.1)
    b.frustum("shoulder", (0, h + sh / 2, 0), r, sh / 2, r0=1.0, r1=nr / r)
    nh = _u(rng, 0.1, 0.3)
    b.frustum("neck", (0, h + sh + nh / 2, 0), nr, nh / 2)
    if rng.uniform() < 0.8:
        b.frustum("cap", (0, h + sh + nh + 0.03, 0), nr * 1.15, 0.03)
    if rng.uniform() < 0.6:
        lh = h * _u(rng, 0.3, 0.5)
        b.frustum("label", (0, h * 0.45, 0), r * 1.01, lh / 2)


def _guitar(rng, b: _Builder):
    lw = _u(rng, 0.3, 0.42)
    uw = lw * _u(rng, 0.7, 0.85)
    th = _u(rng, 0.06, 0.1)
    b.ellipsoid("lower_bout", (0, 0, 0), (lw, lw * _u(rng, 0.9, 1.1), th))
    b.ellipsoid("upper_bout", (0, lw * 1.05, 0), (uw, uw, th * 0.95))
    nl = _u(rng, 0.7, 0.9)
    ny = lw * 1.05 + uw * 0.8 + nl / 2
    b.box("neck", (0, ny, th * 0.3), (0.035, nl / 2, 0.02))
    b.box("head", (0, ny + nl / 2 + 0.09, th * 0.2), (0.05, 0.09, 0.018), rot_x(-0.2))
    if rng.uniform() < 0.8:
        b.frustum("sound_hole", (0, lw * 0.75, th), uw * 0.35, 0.006, rot=Y_TO_Z)
    b.box("bridge", (0, -lw * 0.35, th * 0.95), (lw * 0.35, 0.02, 0.012))


def _airplane(rng, b: _Builder):
    length = _u(rng, 1.6, 2.2)
    fr = _u(rng, 0.09, 0.15)
    b.ellipsoid("fuselage", (0, 0, 0), (length / 2, fr, fr))
    span = _u(rng, 1.4, 2.2)
    chord = _u(rng, 0.2, 0.35)
    sweep = _u(rng, -0.1, 0.5)
    wx = _u(rng, -0.1, 0.15)
    wy = _u(rng, -0.6, 0.4) * fr
    for name, sz in (("wing_l", -1), ("wing_r", 1)):
        rot = rot_y(sz * sweep)
        c = np.array([wx, wy, 0]) + rot @ np.array([0, 0, sz * span / 4])
        b.box(name, c, (chord / 2, 0.015, span / 4), rot)
    tx = -length / 2 + 0.15
    ts = span * _u(rng, 0.25, 0.4)
    for name, sz in (("stab_l", -1), ("stab_r", 1)):
        b.box(name, (tx, 0.02, sz * ts / 2), (0.08, 0.01, ts / 2))
    fh = _u(rng, 0.15, 0.3)
    b.box("fin", (tx - 0.02, fr * 0.5 + fh / 2, 0), (0.1, fh / 2, 0.01), rot_z(_u(rng, 0.1, 0.5)))
    if rng.uniform() < 0.6:
        er = _u(rng, 0.04, 0.07)
        for name, sz in (("engine_l", -1), ("engine_r", 1)):
            c = np.array([wx + 0.05, wy - er - 0.01, 0]) + rot_y(sz * sweep) @ np.array(
                [0, 0, sz * span * 0.18]
            )
            b.frustum(name, c, er, 0.12, r0=0.8, r1=1.0, rot=Y_TO_X)


def _car(rng, b: _Builder):
    length, w = _u(rng, 1.6, 2.2), _u(rng, 0.7, 0.9)
    h = _u(rng, 0.25, 0.4)
    wr = _u(rng, 0.13, 0.19)
    b.box("body", (0, wr + h / 2, 0), (length / 2, h / 2, w / 2))
    cl = length * _u(rng, 0.4, 0.6)
    ch = _u(rng, 0.18, 0.3)
    cx = _u(rng, -0.15, 0.05) * length
    b.frustum(
        "cabin",
        (cx, wr + h + ch / 2, 0),
        cl / 2,
        ch / 2,
        r0=1.0,
        r1=_u(rng, 0.6, 0.9),
        squash=w / cl * 0.9,
    )
    wx = length / 2 - wr * 1.6
    for name, sx, sz in (
        ("wheel_fl", 1, 1),
        ("wheel_fr", 1, -1),
        ("wheel_bl", -1, 1),
        ("wheel_br", -1, -1),
    ):
        b.frustum(name, (sx * wx, wr, sz * (w / 2 - 0.04)), wr, 0.06, rot=Y_TO_Z)
    if rng.uniform() < 0.3:
        b.box("spoiler", (-length / 2 + 0.08, wr + h + 0.08, 0), (0.08, 0.015, w / 2))
    if rng.uniform() < 0.6:
        for name, sz in (("light_l", 1), ("light_r", -1)):
            b.ellipsoid(name, (length / 2, wr + h * 0.65, sz * w * 0.33), (0.02, 0.04, 0.07))


def _rocket(rng, b: _Builder):
    r, h = _u(rng, 0.12, 0.2), _u(rng, 0.9, 1.5)
    b.frustum("body", (0, h / 2, 0), r, h / 2)
    nh = _u(rng, 0.25, 0.5)
    b.frustum("nose", (0, h + nh / 2, 0), r, nh / 2, r0=1.0, r1=0.0)
    nf = 4 if rng.uniform() < 0.5 else 3
    fl, fh = _u(rng, 0.15, 0.3), _u(rng, 0.2, 0.35)
    for i in range(4):
        if i >= nf:
            break
        a = 2 * math.pi * i / nf
        rot = rot_y(a)
        c = rot @ np.array([r + fl / 2, fh / 2, 0])
        b.box(f"fin_{i}", c, (fl / 2, fh / 2, 0.012), rot @ rot_z(_u(rng, -0.2, 0.0)))
    b.frustum("nozzle", (0, -0.06, 0), r * 0.8, 0.06, r0=1.0, r1=0.6)
    if rng.uniform() < 0.6:
        b.ellipsoid("window", (0, h * 0.7, r * 0.98), (r * 0.35, r * 0.35, 0.03))


CATEGORY_PROGRAMS = {
    "airplane": (
        _airplane,
        ["fuselage", "wing_l", "wing_r", "stab_l", "stab_r", "fin", "engine_l", "engine_r"],
    ),
    "bed": (_bed, ["base", "mattress", "headboard", "footboard", "pillow", "blanket"]),
    "bench": (_bench, ["seat", "leg_l", "leg_r", "back", "arm_l", "arm_r"]),
    "bottle": (_bottle, ["body", "shoulder", "neck", "cap", "label"]),
    "car": (
        _car,
        [
            "body",
            "cabin",
            "wheel_fl",
            "wheel_fr",
            "wheel_bl",
            "wheel_br",
            "spoiler",
            "light_l",
            "light_r",
        ],
    ),
    "chair": (
        _chair,
        ["seat", "back", "leg_fl", "leg_fr", "leg_bl", "leg_br", "arm_l", "arm_r", "stretcher"],
    ),
    "guitar": (_guitar, ["lower_bout", "upper_bout", "neck", "head", "sound_hole", "bridge"]),
    "lamp": (_lamp, ["base", "pole", "shade", "finial", "switch"]),
    "mug": (_mug, ["body", "handle", "rim", "saucer"]),
    "rocket": (_rocket, ["body", "nose", "fin_0", "fin_1", "fin_2", "fin_3", "nozzle", "window"]),
    "shelf": (
        _shelf,
        ["side_l", "side_r", "board_0", "board_1", "board_2", "board_3", "board_4", "back"],
    ),
    "table": (
        _table,
        ["top", "leg_fl", "leg_fr", "leg_bl", "leg_br", "apron", "top_round", "pedestal", "foot"],
    ),
}

#: Ordered category names; the index is the class label used in records.
CATEGORIES = sorted(CATEGORY_PROGRAMS)

# Kinds of every part name (fixed per category), filled lazily from a reference instance
# family; used to place semantic points without building a shape.
_PART_KINDS: dict[str, dict[str, str]] = {}


def make_shape(category: str, rng: np.random.Generator) -> Shape:
    """Draw one instance of `category`, normalised to fit the sphere of radius 0.9.

    Args:
      category: one of `CATEGORIES`.
      rng: source of all variation (proportions, optional parts, part shapes).

    Returns:
      A `Shape` whose parts carry ids from the category's fixed part list.
    """
    if category not in CATEGORY_PROGRAMS:
        raise ValueError(f"make_shape: unknown category {category!r}; expected one of {CATEGORIES}")
    program, names = CATEGORY_PROGRAMS[category]
    b = _Builder(category, names)
    program(rng, b)
    return b.shape()


def part_kinds(category: str) -> dict[str, str]:
    """Primitive kind of every part name of `category` (sampled once, then cached)."""
    if category not in _PART_KINDS:
        kinds: dict[str, str] = {}
        rng = np.random.default_rng(_category_seed(category))
        names = CATEGORY_PROGRAMS[category][1]
        for _ in range(200):
            for p in make_shape(category, rng).parts:
                kinds.setdefault(p.name, p.kind)
            if len(kinds) == len(names):
                break
        _PART_KINDS[category] = kinds
    return _PART_KINDS[category]


def _category_seed(category: str) -> int:
    return zlib.crc32(category.encode("utf-8"))


def semantic_points(category: str, n_points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The category's fixed semantic surface points.

    The same id is the same semantic point on every instance: it is a (part, canonical
    coordinate) pair, deterministic for a category name (seeded by its CRC32).

    Args:
      category: one of `CATEGORIES`.
      n_points: number of semantic points (ids 0..n_points-1).

    Returns:
      part_ids (n_points,) int32 (1-based, as in the part-id buffer) and canonical
      coordinates (n_points, 3) float64. Points are spread over parts in proportion to a rough
      area weight so small parts still get a few.
    """
    key = (category, int(n_points))
    if key not in _SEMANTIC_POINTS:
        _SEMANTIC_POINTS[key] = _semantic_points(category, int(n_points))
    ids, coords = _SEMANTIC_POINTS[key]
    return ids.copy(), coords.copy()


#: semantic_points' results, per (category, n_points): they depend on nothing else.
_SEMANTIC_POINTS: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def _semantic_points(category: str, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    from sketch_tf.data.synthetic.geometry import Part as _P
    from sketch_tf.data.synthetic.geometry import sample_canonical

    if category not in CATEGORY_PROGRAMS:
        raise ValueError(f"semantic_points: unknown category {category!r}")
    names = CATEGORY_PROGRAMS[category][1]
    kinds = part_kinds(category)
    rng = np.random.default_rng([_category_seed(category), n_points])
    present = [n for n in names if n in kinds]
    which = rng.integers(0, len(present), size=n_points)
    ids = np.zeros(n_points, np.int32)
    coords = np.zeros((n_points, 3))
    for k, name in enumerate(present):
        sel = np.flatnonzero(which == k)
        dummy = _P(name, 1, kinds[name], (1, 1, 1), I3, (0, 0, 0))
        ids[sel] = names.index(name) + 1
        coords[sel] = sample_canonical(dummy, rng, len(sel))
    return ids, coords
