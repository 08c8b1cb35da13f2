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

Several entries over the same images (`cached_feature_entries`, e.g. two frozen trunks of one
gallery) are computed in one pass over the images: each image is decoded once, and the layer
calls the models have in common are run once (`shared_forward`: same layer class, config and
weights, compared by value, on the same inputs), so two trunks that share their leading frozen
layers run them once per image. The values are the same as those of separate passes (the same
ops on the same inputs), and so are the entries (one folder per entry, as `cached_features`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from sketch_tf.core.files import atomic_file, write_atomic
from sketch_tf.data.options import one_pass

__all__ = [
    "CACHE_SUBDIR",
    "CacheEntry",
    "FeatureCache",
    "cache_root",
    "cached_feature_entries",
    "cached_features",
    "image_keys",
    "shared_forward",
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


def _functional(op):
    """`op` when it is a plain Keras functional model (its call runs its layer graph: nested
    models included, `shared_forward` walks it layer by layer), else None."""
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # another Keras layout: models are called whole (nothing shared)
        return None
    # `_run_through_graph` is Keras' private graph walk (keras>=3.10,<4): without it a model
    # is called whole, which shares nothing but gives the same values.
    if (
        isinstance(op, Functional)
        and type(op).call is Functional.call
        and hasattr(op, "_run_through_graph")
    ):
        return op
    return None


def _layer_signature(op) -> str:
    """What determines a layer's outputs from its inputs: class, config (all but its name and
    trainability) and weights (dtype, shape, values). A layer without a JSON config is only
    ever the same as itself."""
    try:
        config = dict(op.get_config())
        config.pop("name", None)
        config.pop("trainable", None)
        blob = json.dumps([type(op).__module__, type(op).__qualname__, config], sort_keys=True)
    except (NotImplementedError, TypeError, ValueError, AttributeError):
        return f"object {id(op)}"
    h = hashlib.sha256(blob.encode())
    for w in op.weights:
        a = np.asarray(w)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass(eq=False)  # hashable (by identity): tf.function keeps a weak reference to it
class SharedForward:
    """`shared_forward(models)`: call it on float32 [B, ...] inputs -> [model(x) for model in
    models] (training=False). After its first call, `calls` is the number of layer calls the
    models make separately and `computed` how many of them ran (the others were shared)."""

    models: Sequence[Any]
    calls: int = 0
    computed: int = 0
    _signatures: dict = field(default_factory=dict)  # id(layer) -> (layer, signature)

    def _signature(self, op) -> str:
        if id(op) not in self._signatures:
            with tf.init_scope():  # eager while tracing: reads the weights' values
                self._signatures[id(op)] = (op, _layer_signature(op))
        return self._signatures[id(op)][1]

    def __call__(self, x):
        memo: dict[str, list] = {}  # call signature -> flat outputs
        names: dict[int, str] = {}  # id(tensor) -> signature of the value
        alive: list = []  # keeps the tensors of `names` alive (their ids stay theirs)
        calls = [0, 0]

        def name(value, signature):
            names[id(value)] = signature
            alive.append(value)

        def signature_of(value):
            if id(value) not in names:  # a tensor made outside the walk: only itself
                name(value, f"tensor {id(value)}")
            return names[id(value)]

        def operation_fn(op):
            def call(*args, **kwargs):
                if "training" in getattr(op, "_call_context_args", {}):
                    kwargs["training"] = False  # as Functional.call(training=False) does
                graph = _functional(op)
                if graph is not None:  # walk the nested model (its layers may be shared)
                    return graph._run_through_graph(list(args), operation_fn=operation_fn)
                arguments = keras.tree.map_structure(
                    lambda a: ("tensor", signature_of(a)) if tf.is_tensor(a) else repr(a),
                    (args, kwargs),
                )
                key = hashlib.sha256(repr((self._signature(op), arguments)).encode()).hexdigest()
                calls[0] += 1
                if key not in memo:
                    calls[1] += 1
                    outputs = op(*args, **kwargs)
                    flat = keras.tree.flatten(outputs)
                    for i, y in enumerate(flat):
                        name(y, f"{key}/{i}")
                    memo[key] = (outputs, flat)
                return memo[key][0]

            return call

        name(x, "input")
        outputs = [operation_fn(m)(x) for m in self.models]
        self.calls, self.computed = calls
        return outputs


def shared_forward(models: Sequence[Any]) -> SharedForward:
    """One function x -> [m(x, training=False) for m in models] that runs each layer call the
    models have in common once: two calls are the same when their layers have the same class,
    config (but the name) and weights, compared by value (`_layer_signature`), and their
    inputs are the same values. Keras functional models (nested ones included) are walked
    layer by layer, as their own call does; other models are called whole. Two trunks cut
    from the same frozen backbone at different depths thus share their common blocks, whatever
    objects they were built as; models with different weights share nothing and give what
    separate calls give.

    Args:
      models: Keras models, each float32 [B, ...] (the same input) -> [B, ...].

    Returns:
      A `SharedForward` (usable inside a `tf.function`).
    """
    return SharedForward(list(models))


def _compute(
    images: tf.data.Dataset,
    wanted: np.ndarray,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    models: Sequence[Any],
    batch_size: int,
) -> tuple[np.ndarray, list[np.ndarray] | None, SharedForward]:
    """(keys, [values of each model]) of the images whose key is in `wanted`, each key once,
    in stream order (values None when none matched), computed in one pass over `images`
    (`shared_forward`), and the forward function (its shared layer counts)."""
    wanted = np.unique(np.asarray(wanted, np.int64))
    forward = shared_forward(models)
    if not len(wanted):
        return np.zeros([0], np.int64), None, forward
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(wanted), tf.ones([len(wanted)], tf.int64)),
        default_value=0,
    )
    # One pass (`options.one_pass`: no autotuning, whose teardown can idle ~20 s); decoding
    # is a small part of a trunk pass, so fixed parallelism (the CPU count) costs nothing.
    ds = one_pass(
        images.filter(lambda k, e: table.lookup(k) > 0)
        .map(lambda k, e: (k, preprocess(e)), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(2)
    )
    # No autograph: the walk has no tensor-dependent control flow to convert (converting it
    # cost seconds of Python per trace).
    call = tf.function(forward, reduce_retracing=True, autograph=False)
    keys, values = [], [[] for _ in models]
    for k, x in ds:
        keys.append(k.numpy())
        for out, v in zip(values, call(x), strict=True):
            out.append(v.numpy())
    if not keys:
        return np.zeros([0], np.int64), None, forward
    keys = np.concatenate(keys)
    # An image stored twice (the same bytes in two records) is kept once: its first row.
    first = np.sort(np.unique(keys, return_index=True)[1])
    rows = slice(None) if len(first) == len(keys) else first
    return keys[rows], [np.concatenate(v)[rows].astype(np.float32) for v in values], forward


@dataclass(frozen=True)
class CacheEntry:
    """One cache entry of `cached_feature_entries`: the values of `model` over the images.

    Attributes:
      name: what is cached, e.g. "photo_features" (first part of the entry's folder name).
      spec: JSON-serialisable description of everything besides the weights that determines
        the values (backbone, its arguments, image size, preprocessing); part of the digest.
      model: Keras model float32 [B, S, S, 3] -> [B, ...]; run with `training=False`.
      dtype: storage dtype of the values, a `STORE_DTYPES` key: "float32", or "float16" for
        large feature maps (half the disk and memory; lookups still give float32).
    """

    name: str
    spec: dict[str, Any]
    model: Any
    dtype: str = "float32"


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
    """Loads, completes or builds the cached `model` values of every image in `images`: the
    one-entry case of `cached_feature_entries` (`CacheEntry(name, spec, model, dtype)`)."""
    entry = CacheEntry(name, spec, model, dtype)
    return cached_feature_entries(
        root, [entry], images, preprocess, batch_size=batch_size, log=log
    )[0]


def cached_feature_entries(
    root: str,
    entries: Sequence[CacheEntry],
    images: tf.data.Dataset,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    *,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
) -> list[FeatureCache]:
    """Loads, completes or builds several cache entries over the same images, computing what is
    missing in one pass (`shared_forward`: layers the models share run once per image).

    Each entry is checked as on its own (present keys, probe) and only the models of entries
    that miss images run, on the images some entry misses; an entry's folder, keys and values
    are those `cached_features` gives it alone.

    Args:
      root: folder the ``cache/`` folder goes in (the records' folder, or `data.cache_dir`).
      entries: the `CacheEntry`s (distinct names), one model each.
      images: finite dataset of (int64 key `image_keys(encoded)`, string encoded image).
      preprocess: encoded image (scalar string) -> float32 [S, S, 3], every model's input.
      batch_size: images per model call while computing.
      log: progress sink.

    Returns:
      One FeatureCache per entry, in order, each holding (at least) every key of `images`.

    Raises:
      OSError: an entry cannot be written (names the folder and `data.cache_dir`).
      ValueError: `images` is empty, a dtype is not a `STORE_DTYPES` key, or two entries have
        one name.
    """
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"feature cache: entries need distinct names, got {names}")
    for e in entries:
        if e.dtype not in STORE_DTYPES:
            raise ValueError(f"feature cache {e.name}: dtype must be one of {sorted(STORE_DTYPES)}")
    keys_only = images.map(lambda k, e: k).batch(4096)
    needed = np.unique(np.concatenate([np.zeros([0], np.int64), *keys_only.as_numpy_iterator()]))
    if not len(needed):
        raise ValueError(f"feature cache {', '.join(names)}: no images to cache under {root}")
    digests = [weights_digest(e.model) for e in entries]
    paths = [
        _entry_dir(root, e.name, e.spec, d, e.dtype) for e, d in zip(entries, digests, strict=True)
    ]
    stored = [_read_entry(p, e.dtype) for p, e in zip(paths, entries, strict=True)]
    # Every cached image is kept, needed now or not: callers may cache different subsets of
    # one record folder (seen classes for training, unseen for evaluation) in one entry.
    probes = [None if s is None else s[0][np.isin(s[0], needed)][:PROBE_IMAGES] for s in stored]
    probed = [i for i, p in enumerate(probes) if p is not None and len(p)]
    if probed:
        probe_k, probe_v, _ = _compute(
            images, np.concatenate([probes[i] for i in probed]), preprocess,
            [entries[i].model for i in probed], batch_size,
        )  # fmt: skip
        for i, computed in zip(probed, probe_v or [None] * len(probed), strict=True):
            keys, values = stored[i]
            mine = np.isin(probe_k, probes[i])
            rtol = STORE_DTYPES[entries[i].dtype]
            if computed is None or not mine.any():
                fresh = False
            else:
                ref = values[np.searchsorted(keys, probe_k[mine])].astype(np.float32)
                scale = rtol * max(float(np.abs(ref).max()), 1e-6)
                fresh = np.allclose(computed[mine], ref, rtol=rtol, atol=scale)
            if not fresh:
                log(
                    f"feature cache {paths[i]}: the probe images differ from the cached values "
                    "(stale: trunk code or library changed); rebuilding"
                )
                stored[i] = None
    empty = (np.zeros([0], np.int64), None)
    stored = [s or empty for s in stored]
    missing = [np.setdiff1d(needed, s[0]) for s in stored]
    todo = [
        i for i, (m, s) in enumerate(zip(missing, stored, strict=True)) if len(m) or s[1] is None
    ]
    out: list[FeatureCache | None] = [
        None if i in todo else FeatureCache(paths[i], *stored[i], computed=0)
        for i in range(len(entries))
    ]
    if not todo:
        return out
    start = time.time()
    new_k, new_v, forward = _compute(
        images, np.concatenate([missing[i] for i in todo]), preprocess,
        [entries[i].model for i in todo], batch_size,
    )  # fmt: skip
    seconds = time.time() - start
    shared = (
        f" in one pass ({forward.computed} of {forward.calls} layer calls run)"
        if len(todo) > 1
        else ""
    )
    for j, i in enumerate(todo):
        keys, values = stored[i]
        mine = np.isin(new_k, missing[i])
        log(
            f"feature cache {paths[i]}: computed {int(mine.sum())} of {len(needed)} images in "
            f"{seconds:.1f} s{shared}"
        )
        if new_v is not None and mine.any():
            add = new_v[j][mine].astype(entries[i].dtype, copy=False)
            keys = np.concatenate([keys, new_k[mine]])
            values = add if values is None else np.concatenate([values, add])
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        _write_entry(paths[i], keys, values, entries[i].spec, digests[i])
        out[i] = FeatureCache(paths[i], keys, values, computed=int(mine.sum()))
    return out
