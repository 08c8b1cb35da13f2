"""The one place that names TFRecord feature keys and encodes / parses each record kind.

Every record is a serialized `tf.train.Example`. Writers (sources, the synthetic renderer) call
`encode_<kind>(...) -> bytes`; readers call `parse_<kind>(serialized) -> dict[str, tf.Tensor]`,
which works eagerly and inside `tf.data.Dataset.map` for a scalar string (one record) or a 1-D
batch of strings (`ds.batch(n).map(parse_...)`).

Record kinds (bump `SCHEMA_VERSION` whenever a key, dtype or meaning changes; an optional key
that older records lack, parsed to its default, keeps the version):

- `labelled_image`: one image with a class label and a depiction domain. Used by zero-shot SBIR
  (domain `sketch` / `photo`), PACS-style multi-domain sets, style-aware SBIR (domain = style
  name, plus optional integer `style_id` / `content_id`) and fine-grained SBIR (the
  `instance_id` pairs a sketch with the image of the same object; a sketch may carry the
  human relative judgements of its dataset as optional `preference_pairs`).
- `correspondence_view`: one line drawing of one shape seen from one view, with the pixel
  positions of its semantic points (what the synthetic renderer and SketchZooms' per-view PNGs
  give).
- `correspondence_pair`: two line drawings of two shapes (or views) of one category with the
  points of semantic ids visible in both (SketchZooms train / eval pairs).

Point coordinates are float32 pixels `(x, y)`: x to the right, y down, origin at the top-left
corner of the top-left pixel (so the centre of pixel (col=0, row=0) is (0.5, 0.5)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from sketch_tf.core import autograph  # noqa: F401  (traced as written: core/autograph.py)

#: Version of every record layout below; readers refuse datasets written with another one.
SCHEMA_VERSION = 1

KIND_LABELLED_IMAGE = "labelled_image"
KIND_CORRESPONDENCE_VIEW = "correspondence_view"
KIND_CORRESPONDENCE_PAIR = "correspondence_pair"
KINDS = (KIND_LABELLED_IMAGE, KIND_CORRESPONDENCE_VIEW, KIND_CORRESPONDENCE_PAIR)

# ---- feature keys (the only definition; everything else imports these names) -------------
IMAGE = "image"  # encoded PNG / JPEG bytes
CLASS_ID = "class_id"  # int64, index into the manifest's `classes`
CLASS_NAME = "class_name"  # bytes, utf-8
DOMAIN = "domain"  # bytes: sketch, photo, art_painting, cartoon, oilpaint, ...
INSTANCE_ID = "instance_id"  # bytes: groups images of one object (Sketchy photo id, ...)
SOURCE = "source"  # bytes: path of the original file, relative to the source root
STYLE_ID = "style_id"  # int64, -1 when unknown
CONTENT_ID = "content_id"  # int64, -1 when unknown
# int64 [2P] flat (closer, farther) pairs of objects: for this sketch, humans judged the
# object whose integer instance id is `closer` more similar than `farther` (QMUL's triplet
# annotations). Optional: absent = no judgement.
PREFERENCE_PAIRS = "preference_pairs"

IMAGE_A = "image_a"
IMAGE_B = "image_b"
POINTS = "points"  # float32 [N, 2] stored flat as [2N]
POINTS_A = "points_a"
POINTS_B = "points_b"
POINT_IDS = "point_ids"  # int64 [N]
CATEGORY = "category"
CATEGORY_ID = "category_id"
INSTANCE = "instance"
VIEW = "view"
INSTANCE_A = "instance_a"
INSTANCE_B = "instance_b"
VIEW_A = "view_a"
VIEW_B = "view_b"

#: Keys holding the class name / domain of a record of each kind (what manifests count).
CLASS_KEY = {
    KIND_LABELLED_IMAGE: CLASS_NAME,
    KIND_CORRESPONDENCE_VIEW: CATEGORY,
    KIND_CORRESPONDENCE_PAIR: CATEGORY,
}

# Feature types of the specs below (a spec says how a key is parsed and, in `_serialize`, encoded).
_TEXT = tf.io.FixedLenFeature([], tf.string)  # also encoded image bytes
_OPTIONAL_TEXT = tf.io.FixedLenFeature([], tf.string, default_value="")
_INT = tf.io.FixedLenFeature([], tf.int64)
_OPTIONAL_INT = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
_POINT_LIST = tf.io.VarLenFeature(tf.float32)
_ID_LIST = tf.io.VarLenFeature(tf.int64)

# Key order = argument order of the matching `encode_<kind>`.
_LABELLED_SPEC = {
    IMAGE: _TEXT,
    CLASS_ID: _INT,
    CLASS_NAME: _TEXT,
    DOMAIN: _TEXT,
    INSTANCE_ID: _OPTIONAL_TEXT,
    SOURCE: _OPTIONAL_TEXT,
    STYLE_ID: _OPTIONAL_INT,
    CONTENT_ID: _OPTIONAL_INT,
    PREFERENCE_PAIRS: _ID_LIST,
}

# Held by both correspondence kinds, between their points and their shape / view ids.
_CATEGORY_SPEC = {POINT_IDS: _ID_LIST, CATEGORY: _TEXT, CATEGORY_ID: _INT}

_VIEW_SPEC = {
    IMAGE: _TEXT,
    POINTS: _POINT_LIST,
    **_CATEGORY_SPEC,
    INSTANCE: _OPTIONAL_TEXT,
    VIEW: _OPTIONAL_TEXT,
    SOURCE: _OPTIONAL_TEXT,
}

_PAIR_SPEC = {
    IMAGE_A: _TEXT,
    IMAGE_B: _TEXT,
    POINTS_A: _POINT_LIST,
    POINTS_B: _POINT_LIST,
    **_CATEGORY_SPEC,
    INSTANCE_A: _OPTIONAL_TEXT,
    INSTANCE_B: _OPTIONAL_TEXT,
    VIEW_A: _OPTIONAL_TEXT,
    VIEW_B: _OPTIONAL_TEXT,
}


# ---- helpers ---------------------------------------------------------------------------------
def _bytes(value: bytes | str) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _floats(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values.reshape(-1).tolist()))


def _ints(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values.reshape(-1).tolist()))


def _feature(spec, value) -> tf.train.Feature:
    # The parse spec of a key also says how to encode it, so writers and readers cannot drift.
    if isinstance(spec, tf.io.VarLenFeature):
        return _floats(value) if spec.dtype == tf.float32 else _ints(value)
    return _bytes(value) if spec.dtype == tf.string else _int(value)


def _serialize(spec: dict, *values) -> bytes:
    """Serialized `tf.train.Example` holding `values` under the keys of `spec`, in its order."""
    feature = {key: _feature(spec[key], value) for key, value in zip(spec, values, strict=True)}
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Deterministic: map entries sorted by key. Otherwise their order follows a per-process
    # hash, and one seed gave other record bytes in another process.
    return example.SerializeToString(deterministic=True)


def _check_image(name: str, image: bytes) -> None:
    if not isinstance(image, bytes | bytearray) or len(image) == 0:
        raise ValueError(f"{name}: expected non-empty encoded PNG/JPEG bytes, got {type(image)}")
    if not (image[:8] == b"\x89PNG\r\n\x1a\n" or image[:3] == b"\xff\xd8\xff"):
        raise ValueError(f"{name}: bytes are neither PNG nor JPEG (starts with {image[:8]!r})")


def _check_text(name: str, value) -> None:
    if not isinstance(value, str | bytes):
        raise ValueError(f"{name}: expected str or bytes, got {type(value).__name__}")


def _check_points(name: str, points, n: int | None = None) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float32)
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected float array of shape [N, 2] (x, y), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: has {arr.shape[0]} points, expected {n} (one per point id)")
    return arr


def _check_ids(name: str, ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        arr = arr.reshape(0).astype(np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected 1-D integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def _check_correspondence(
    point_ids, points: dict, category, category_id, where: str = ""
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Checks the point ids, each named point set ([N, 2], one row per id) and the category.

    `where` is appended to the category error (e.g. " ('path')"). Returns int64 ids [N] and
    the float32 [N, 2] point arrays in the order of `points`.
    """
    ids = _check_ids("point_ids", point_ids)
    arrays = [_check_points(name, value, len(ids)) for name, value in points.items()]
    _check_text("category", category)
    if not category or int(category_id) < 0:
        raise ValueError(f"category must be non-empty and category_id >= 0{where}")
    return ids, arrays


def _parse(serialized: tf.Tensor, spec: dict) -> dict[str, tf.Tensor]:
    serialized = tf.convert_to_tensor(serialized, tf.string)
    rank = serialized.shape.rank
    if rank not in (0, 1):
        raise ValueError(
            f"serialized records must be a scalar or 1-D string tensor, got {serialized}"
        )
    parse = tf.io.parse_single_example if rank == 0 else tf.io.parse_example
    out = parse(serialized, spec)
    # Variable-length features (points, point ids) come back sparse.
    for key, feature in spec.items():
        if isinstance(feature, tf.io.VarLenFeature):
            if feature.dtype == tf.float32:
                out[key] = _dense_points(out[key], batched=rank == 1)
            else:
                out[key] = tf.sparse.to_dense(out[key])
    return out


def _dense_points(sparse: tf.SparseTensor, batched: bool) -> tf.Tensor:
    # Flat [2N] (or [B, 2max(N)], zero padded) -> [N, 2] (or [B, maxN, 2]).
    dense = tf.sparse.to_dense(sparse)
    if batched:
        return tf.reshape(dense, [tf.shape(dense)[0], -1, 2])
    return tf.reshape(dense, [-1, 2])


# ---- labelled_image --------------------------------------------------------------------------
def encode_labelled_image(
    image: bytes,
    class_id: int,
    class_name: str,
    domain: str,
    instance_id: str = "",
    source: str = "",
    style_id: int = -1,
    content_id: int = -1,
    preference_pairs=(),
) -> bytes:
    """Serialize one labelled image record.

    Args:
      image: encoded PNG or JPEG bytes (any size, 1/3/4 channels).
      class_id: int >= 0, index into the dataset's class list.
      class_name: class name (utf-8).
      domain: depiction domain, e.g. "sketch", "photo", "art_painting", or a style name.
      instance_id: id grouping images of one object (e.g. the Sketchy photo a sketch was drawn
        from); "" when unknown.
      source: path of the original file relative to the source root (for error messages).
      style_id, content_id: optional int labels of style-labelled collections (-1 = unknown).
      preference_pairs: int [P, 2] (closer, farther) object pairs of human relative
        judgements for this sketch, by integer instance id (see `PREFERENCE_PAIRS`); () =
        none.

    Returns:
      bytes of a serialized `tf.train.Example`.
    """
    _check_image(f"image of {source or class_name!r}", image)
    if int(class_id) < 0:
        raise ValueError(f"class_id must be >= 0, got {class_id} for {source or class_name!r}")
    for name, value in (
        ("class_name", class_name),
        ("domain", domain),
        ("instance_id", instance_id),
        ("source", source),
    ):
        _check_text(name, value)
    if not class_name or not domain:
        raise ValueError(f"class_name and domain must be non-empty (record {source!r})")
    pairs = np.asarray(preference_pairs)
    if pairs.size == 0:
        pairs = np.zeros([0, 2], np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(
            f"preference_pairs of {source or class_name!r}: expected int pairs [P, 2] "
            f"(closer, farther), got {pairs.dtype} {pairs.shape}"
        )
    if np.any(pairs < 0):
        raise ValueError(f"preference_pairs of {source or class_name!r}: negative object id")
    values = (bytes(image), class_id, class_name, domain, instance_id, source, style_id, content_id)
    return _serialize(_LABELLED_SPEC, *values, pairs.astype(np.int64))


def parse_labelled_image(serialized) -> dict[str, tf.Tensor]:
    """Parse `labelled_image` records.

    Args:
      serialized: scalar tf.string (one record) or [B] tf.string.

    Returns:
      dict with `image` (tf.string, still encoded), `class_id` (int64), `class_name`,
      `domain`, `instance_id`, `source` (tf.string), `style_id`, `content_id` (int64, -1 when
      absent); each scalar, or [B] for a batch; and `preference_pairs` int64 [2P] flat
      (closer, farther, closer, ...; [0] when absent), or [B, 2 max(P)] zero padded.
    """
    return _parse(serialized, _LABELLED_SPEC)


# ---- correspondence_view ---------------------------------------------------------------------
def parse_correspondence_view(serialized) -> dict[str, tf.Tensor]:
    """Parse `correspondence_view` records.

    Returns:
      dict with `image` (tf.string), `points` float32 [N, 2], `point_ids` int64 [N],
      `category`, `instance`, `view`, `source` (tf.string), `category_id` (int64). For a batch
      [B] of records, points are [B, maxN, 2] and point_ids [B, maxN], zero padded.
    """
    return _parse(serialized, _VIEW_SPEC)


# ---- correspondence_pair ---------------------------------------------------------------------
def encode_correspondence_pair(
    image_a: bytes,
    image_b: bytes,
    points_a,
    points_b,
    point_ids,
    category: str,
    category_id: int,
    instance_a: str = "",
    instance_b: str = "",
    view_a: str = "",
    view_b: str = "",
) -> bytes:
    """Serialize one pair of line drawings with N corresponding points.

    Args:
      image_a, image_b: encoded PNG bytes of two drawings (e.g. 512x512).
      points_a, points_b: float [N, 2] pixel (x, y); row i of both is the same semantic point.
      point_ids: int [N] semantic point ids within the category.
      category, category_id: category name and its id (>= 0).
      instance_a/b, view_a/b: shape and view ids of each drawing.
    """
    _check_image("image_a", image_a)
    _check_image("image_b", image_b)
    ids, (pa, pb) = _check_correspondence(
        point_ids, {"points_a": points_a, "points_b": points_b}, category, category_id
    )
    values = (bytes(image_a), bytes(image_b), pa, pb, ids, category, category_id)
    return _serialize(_PAIR_SPEC, *values, instance_a, instance_b, view_a, view_b)


def parse_correspondence_pair(serialized) -> dict[str, tf.Tensor]:
    """Parse `correspondence_pair` records.

    Returns:
      dict with `image_a`, `image_b` (tf.string), `points_a`, `points_b` float32 [N, 2],
      `point_ids` int64 [N], `category`, `instance_a/b`, `view_a/b` (tf.string),
      `category_id` (int64). Batched input gives [B, maxN, 2] / [B, maxN], zero padded.
    """
    return _parse(serialized, _PAIR_SPEC)


#: kind -> parse spec (key -> `tf.io.FixedLenFeature` / `VarLenFeature`) of its records.
SPECS = {
    KIND_LABELLED_IMAGE: _LABELLED_SPEC,
    KIND_CORRESPONDENCE_VIEW: _VIEW_SPEC,
    KIND_CORRESPONDENCE_PAIR: _PAIR_SPEC,
}

#: Keys holding the class id of a record of each kind (an index into the manifest's `classes`).
CLASS_ID_KEY = {
    KIND_LABELLED_IMAGE: CLASS_ID,
    KIND_CORRESPONDENCE_VIEW: CATEGORY_ID,
    KIND_CORRESPONDENCE_PAIR: CATEGORY_ID,
}


#: Variable-length keys a record may leave out (parsed as an empty list).
OPTIONAL_LISTS = frozenset({PREFERENCE_PAIRS})


class FeatureRule(NamedTuple):
    """What a record of some kind must hold under one key (derived from the kind's spec).

    `dtype` is tf.string, tf.int64 or tf.float32 (the value list a `tf.train.Feature` holds:
    bytes_list, int64_list, float_list). `required`: the encoder always writes the key and
    the parser has no default for it (a fixed-length feature without `default_value`, or a
    variable-length list not in `OPTIONAL_LISTS`, such as points and point ids).
    `scalar`: exactly one value when present (fixed-length `[]`); otherwise any number of
    values.
    """

    key: str
    dtype: tf.dtypes.DType
    required: bool
    scalar: bool


def feature_rules(kind: str) -> list[FeatureRule]:
    """The `FeatureRule` of every key of `kind`'s records, in spec order."""
    if kind not in SPECS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    rules = []
    for key, feature in SPECS[kind].items():
        fixed = isinstance(feature, tf.io.FixedLenFeature)
        required = feature.default_value is None if fixed else key not in OPTIONAL_LISTS
        rules.append(FeatureRule(key, feature.dtype, required, fixed))
    return rules


#: kind -> parse function (for generic readers).
PARSERS = {
    KIND_LABELLED_IMAGE: parse_labelled_image,
    KIND_CORRESPONDENCE_VIEW: parse_correspondence_view,
    KIND_CORRESPONDENCE_PAIR: parse_correspondence_pair,
}


def parse(kind: str, serialized) -> dict[str, tf.Tensor]:
    """Parse records of `kind` (one of `KINDS`)."""
    if kind not in PARSERS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    return PARSERS[kind](serialized)


def class_names_from(records: Sequence[bytes], kind: str) -> list[str]:
    """Class / category names of serialized records (Python side, for tools and tests)."""
    key = CLASS_KEY[kind]
    out = []
    for rec in records:
        ex = tf.train.Example.FromString(rec)
        out.append(ex.features.feature[key].bytes_list.value[0].decode("utf-8"))
    return out
