"""Derived data computed once per image and cached beside the records.

The CPU recipe for pretrained trunks (DESIGN.md): freeze the trunk, compute its features once
per image, cache them, and train only the heads. A cache entry is keyed by the image: the
64-bit farmhash fingerprint of the *encoded image bytes* stored in the record
(`image_keys`, ``tf.fingerprint``), so the records that `prepare_data.py` writes stay the
input of every variant and a record whose image changes simply has a new key.

Layout: ``<root>/cache/<name>-<digest>/{features.npz, spec.json}`` where `root` is the record
folder (or a folder of `data.cache_dir` per record folder, `cache_root`), `name` says what is
cached (e.g. ``photo_features``) and `digest` is the sha256 of the `spec` (what the caller says
determines the values: trunk, cut, pooling, image size, preprocessing) *and of the trunk's
weights*, so a different or retrained trunk gets its own entry and never reads another's
values. Rewriting a record folder with `prepare_data.py --overwrite` removes a cache inside it.
``features.npz`` holds ``keys`` int64 [N] and ``values`` [N, ...] (float32, or float16 when
the caller stores large feature maps at half the size: `cached_features(dtype=...)`), written
to a temp file and renamed (atomic: a crash or a full disk leaves the previous file, never a
half-written one).

Staleness: on load, every key the caller needs must be present (records rewritten with other
images, or another subset of them -> the missing keys are computed and added; nothing cached is
dropped, so training and evaluation subsets of one record folder share an entry), and a probe
of a few cached images is recomputed and compared (`PROBE_IMAGES`, relative tolerance 1e-4,
or the rounding of the stored dtype),
which catches what the digest cannot see (a code or library change in the computation); a
failed probe rebuilds the whole entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.core.files import atomic_file, write_atomic

__all__ = [
    "CACHE_SUBDIR",
    "FeatureCache",
    "cache_root",
    "cached_features",
    "image_keys",
    "weights_digest",
]

CACHE_SUBDIR = "cache"
#: Bump when the cache layout or the meaning of a key changes.
CACHE_FORMAT = 1
#: Cached images recomputed on every load to detect a stale entry.
PROBE_IMAGES = 2
#: Storage dtypes of the values -> relative tolerance of the staleness probe (float16 keeps
#: 11 significant bits: a value differs from its rounding by up to 2**-11 of itself).
STORE_DTYPES = {"float32": 1e-4, "float16": 2e-3}
_FILE = "features.npz"
_SPEC = "spec.json"


def cache_root(records_dir: str, cache_dir: str = "") -> str:
    """Where a record folder's cache entries go: the record folder itself, or with
    `cache_dir` (`data.cache_dir`) ``<cache_dir>/<folder name>-<sha256(abs path)[:8]>`` so
    that several record folders (train / test splits) share one cache_dir without mixing."""
    if not cache_dir:
        return str(records_dir)
    absolute = os.path.abspath(os.fspath(records_dir))
    tag = hashlib.sha256(absolute.encode()).hexdigest()[:8]
    return os.path.join(cache_dir, f"{os.path.basename(absolute.rstrip(os.sep))}-{tag}")


def image_keys(encoded: tf.Tensor) -> tf.Tensor:
    """Cache keys of encoded images: string [...] -> int64 [...] (farmhash64 of the bytes)."""
    encoded = tf.convert_to_tensor(encoded, tf.string)
    flat = tf.reshape(encoded, [-1])
    keys = tf.bitcast(tf.fingerprint(flat), tf.int64)  # uint8 [N, 8] -> int64 [N]
    return tf.reshape(keys, tf.shape(encoded))


def weights_digest(model) -> str:
    """sha256 hex of a Keras model's weights (shapes, dtypes and values, in weight order)."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.asarray(w)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass
class FeatureCache:
    """Cached per-image values: `keys` int64 [N] (unique) and `values` [N, ...] (float32, or
    float16 as stored; `lookup` always gives float32).

    Attributes:
      path: the entry's folder.
      computed: how many images were computed (not read from disk) when it was loaded.
    """

    path: str
    keys: np.ndarray
    values: np.ndarray
    computed: int = 0

    def lookup(self, where: str = "feature cache") -> Callable[[tf.Tensor], tf.Tensor]:
        """A function int64 keys [...] -> float32 values [..., *value_shape], usable in
        tf.data; an unknown key fails with an InvalidArgumentError naming `where` and the
        cache folder (it means the records changed after the cache was built)."""
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.keys, tf.int64), tf.range(len(self.keys), dtype=tf.int64)
            ),
            default_value=-1,
        )
        values = tf.constant(self.values)
        message = f"{where}: an image is not in the cache {self.path} (records changed?)"

        def fn(keys):
            rows = table.lookup(tf.cast(keys, tf.int64))
            with tf.control_dependencies([tf.debugging.assert_non_negative(rows, message)]):
                return tf.cast(tf.gather(values, rows), tf.float32)

        return fn


def _entry_dir(
    root: str, name: str, spec: dict[str, Any], digest: str, dtype: str = "float32"
) -> str:
    entry = {"format": CACHE_FORMAT, "spec": spec, "weights": digest}
    if dtype != "float32":  # float32 entries keep the folder names they always had
        entry["dtype"] = dtype
    blob = json.dumps(entry, sort_keys=True)
    return os.path.join(
        root, CACHE_SUBDIR, f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
    )


def _read_entry(path: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray] | None:
    file = os.path.join(path, _FILE)
    if not os.path.isfile(file):
        return None
    try:
        with np.load(file) as data:
            keys, values = data["keys"], data["values"]
    except (OSError, ValueError, KeyError, EOFError):
        return None  # unreadable (e.g. a foreign file): rebuilt
    if keys.ndim != 1 or len(keys) != len(values):
        return None
    return keys.astype(np.int64), values.astype(dtype, copy=False)


def _write_entry(path: str, keys: np.ndarray, values: np.ndarray, spec: dict, digest: str) -> None:
    try:
        spec_json = {"format": CACHE_FORMAT, "spec": spec, "weights_sha256": digest}
        write_atomic(os.path.join(path, _SPEC), json.dumps(spec_json, indent=1))
        # Streamed into the temporary (no second copy of a large array in memory).
        with atomic_file(os.path.join(path, _FILE), "wb") as f:
            np.savez(f, keys=keys, values=values)
    except OSError as e:
        raise OSError(
            f"feature cache: cannot write {path} ({e.strerror or e}); make the folder writable "
            "or point --config.data.cache_dir at a writable one"
        ) from e


def _compute(
    images: tf.data.Dataset,
    wanted: np.ndarray,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    model,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(keys, values) of the images whose key is in `wanted`, each key once, in stream order
    (values None when none matched)."""
    wanted = np.unique(np.asarray(wanted, np.int64))
    if not len(wanted):
        return np.zeros([0], np.int64), None
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(wanted), tf.ones([len(wanted)], tf.int64)),
        default_value=0,
    )
    ds = (
        images.filter(lambda k, e: table.lookup(k) > 0)
        .map(lambda k, e: (k, preprocess(e)), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(2)
    )
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    keys, values, seen = [], [], set()
    for k, x in ds:
        k = k.numpy()
        v = call(x).numpy().astype(np.float32)
        fresh = [i for i, key in enumerate(k.tolist()) if key not in seen]
        seen.update(k.tolist())
        keys.append(k[fresh])
        values.append(v[fresh])
    if not keys:
        return np.zeros([0], np.int64), None
    return np.concatenate(keys), np.concatenate(values)


def cached_features(
    root: str,
    name: str,
    spec: dict[str, Any],
    model,
    images: tf.data.Dataset,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    *,
    batch_size: int = 32,
    dtype: str = "float32",
    log: Callable[[str], None] = print,
) -> FeatureCache:
    """Loads, completes or builds the cached `model` values of every image in `images`.

    Args:
      root: folder the ``cache/`` folder goes in (the records' folder, or `data.cache_dir`).
      name: what is cached, e.g. "photo_features" (first part of the entry's folder name).
      spec: JSON-serialisable description of everything besides the weights that determines
        the values (backbone, its arguments, image size, preprocessing); part of the digest.
      model: Keras model float32 [B, S, S, 3] -> [B, ...]; run with `training=False`.
      images: finite dataset of (int64 key `image_keys(encoded)`, string encoded image).
      preprocess: encoded image (scalar string) -> float32 [S, S, 3], the model's input.
      batch_size: images per model call while computing.
      dtype: storage dtype of the values, a `STORE_DTYPES` key: "float32", or "float16" for
        large feature maps (half the disk and memory; lookups still give float32).
      log: progress sink.

    Returns:
      FeatureCache holding (at least) every key of `images`.

    Raises:
      OSError: the entry cannot be written (names the folder and `data.cache_dir`).
      ValueError: `images` is empty.
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"feature cache {name}: dtype must be one of {sorted(STORE_DTYPES)}")
    digest = weights_digest(model)
    path = _entry_dir(root, name, spec, digest, dtype)
    needed = np.unique(np.fromiter((int(k) for k, _ in images.as_numpy_iterator()), np.int64))
    if not len(needed):
        raise ValueError(f"feature cache {name}: no images to cache under {root}")
    keys, values = np.zeros([0], np.int64), None
    entry = _read_entry(path, dtype)
    if entry is not None:
        # Every cached image is kept, needed now or not: callers may cache different subsets
        # of one record folder (seen classes for training, unseen for evaluation) in one entry.
        keys, values = entry
        probe = keys[np.isin(keys, needed)][:PROBE_IMAGES]
        probe_k, probe_v = _compute(images, probe, preprocess, model, batch_size)
        if len(probe):
            rtol = STORE_DTYPES[dtype]
            ref = values[np.searchsorted(keys, probe_k)] if len(probe_k) else None
            ref = None if ref is None else ref.astype(np.float32)
            scale = rtol * max(float(np.abs(ref).max()), 1e-6) if ref is not None else 0.0
            if ref is None or not np.allclose(probe_v, ref, rtol=rtol, atol=scale):
                log(
                    f"feature cache {path}: the probe images differ from the cached values "
                    "(stale: trunk code or library changed); rebuilding"
                )
                keys, values = np.zeros([0], np.int64), None
    missing = np.setdiff1d(needed, keys)
    if not len(missing) and values is not None:
        return FeatureCache(path, keys, values, computed=0)
    start = time.time()
    new_k, new_v = _compute(images, missing, preprocess, model, batch_size)
    log(
        f"feature cache {path}: computed {len(new_k)} of {len(needed)} images in "
        f"{time.time() - start:.1f} s"
    )
    if new_v is not None:
        new_v = new_v.astype(dtype, copy=False)
        keys = np.concatenate([keys, new_k])
        values = new_v if values is None else np.concatenate([values, new_v])
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    _write_entry(path, keys, values, spec, digest)
    return FeatureCache(path, keys, values, computed=len(new_k))
