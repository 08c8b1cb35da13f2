"""Sharded TFRecord datasets: an atomic writer with `manifest.json`, and checked readers.

A dataset is a folder holding `<prefix>-NNNNN.tfrecord` shards and a `manifest.json`:

```
{"schema_version": 1, "kind": "labelled_image", "num_records": 2780,
 "classes": ["dog", ...],            # index = class_id
 "domains": ["art_painting", ...],   # sorted
 "counts": {"per_class": {...}, "per_domain": {...}, "per_domain_class": {dom: {cls: n}}},
 "shards": [{"file": "data-00000.tfrecord", "records": 100, "bytes": 123, "sha256": "...",
             "domain": "photo" | null, "class": "dog" | null}, ...],
 "skipped": {"count": 0, "items": [{"path": ..., "reason": ...}]},
 "info": {...}}                      # free-form, filled by the caller (source options, seed)
```

`ShardedWriter` writes into a hidden temp folder next to `out_dir` and renames it to `out_dir`
only when the `with` block ends without an exception, so a crash never leaves a dataset that
looks complete. With `group_by="domain_class"` every (domain, class) gets its own shards, which
lets the input pipeline build per-class datasets for balanced sampling without scanning
everything (`shard["domain"]` / `shard["class"]` say what a shard holds).

At training time `record_dataset` reads the shards with a per-shard record-count check, so a
truncated or corrupt shard fails with its file name instead of tf.data's anonymous
`DataLossError`, and (with `SKETCH_TF_CHECK_RECORDS=1`, or `prepare_data.py --verify` for a
whole dataset) checks every record against the manifest's kind (`example_layout`,
`schema.feature_rules`), so a record missing a feature, with a feature of the wrong dtype, of
another kind or schema, or with a class id the manifest does not list, fails naming the shard,
the record's index in it and the feature instead of parsing anonymously or with defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import tensorflow as tf

from sketch_tf.data import schema

MANIFEST = "manifest.json"
GROUP_BY = ("none", "class", "domain_class")
_REQUIRED_KEYS = ("schema_version", "kind", "num_records", "classes", "domains", "counts", "shards")


class DatasetError(ValueError):
    """A dataset folder, its manifest or one of its shards is missing, invalid or corrupt."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


class ShardedWriter:
    """Context manager writing serialized records into size-bounded TFRecord shards.

    Args:
      out_dir: final dataset folder. Must not exist unless `overwrite=True`.
      kind: record kind, one of `schema.KINDS`.
      prefix: shard file name prefix (`<prefix>-00000.tfrecord`).
      shard_bytes: a shard is closed once it holds at least this many bytes (record payload +
        16 bytes of TFRecord framing each). Default 128 MiB.
      classes: optional full class list (index = class_id). When given, every written class_id
        must name it and every listed class must get a record (unless
        `allow_empty_classes`). When absent, the list is built from the written (id, name)
        pairs and the ids must be 0..C-1 without gaps.
      group_by: "none" (one stream of shards, records in write order), "class" or
        "domain_class" (separate shards per class / per (domain, class)).
      overwrite: replace an existing `out_dir` (the old one is removed only after the new one
        is complete).
      allow_empty_classes: do not fail when a listed class has no record.

    Use `write(record, class_id=, class_name=, domain=)` per record, `skip(path, reason)` for
    bad inputs skipped by the caller, and fill `writer.info` (dict) with anything to record in
    the manifest. After the block, `writer.manifest` holds the manifest dict.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        kind: str,
        prefix: str = "data",
        shard_bytes: int = 128 << 20,
        classes: list[str] | None = None,
        group_by: str = "none",
        overwrite: bool = False,
        allow_empty_classes: bool = False,
    ):
        if kind not in schema.KINDS:
            raise ValueError(f"kind must be one of {schema.KINDS}, got {kind!r}")
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
        if int(shard_bytes) <= 0:
            raise ValueError(f"shard_bytes must be > 0, got {shard_bytes}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty file name part, got {prefix!r}")
        self.out_dir = Path(out_dir).expanduser().absolute()
        self.kind = kind
        self.prefix = prefix
        self.shard_bytes = int(shard_bytes)
        self.classes = list(classes) if classes is not None else None
        self.group_by = group_by
        self.overwrite = overwrite
        self.allow_empty_classes = allow_empty_classes
        self.info: dict = {}
        self.manifest: dict | None = None
        self._tmp: Path | None = None
        self._open: dict = {}  # group -> [writer, shard entry]
        self._shards: list[dict] = []
        self._class_names: dict[int, str] = {}
        self._per_dc: dict[str, Counter] = defaultdict(Counter)
        self._skipped: list[dict] = []
        self._n = 0

    # -- context protocol ----------------------------------------------------------------
    def __enter__(self) -> ShardedWriter:
        if self.out_dir.exists() and not self.overwrite:
            raise DatasetError(f"output folder {self.out_dir} exists (pass overwrite=True)")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent)
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._finish()
        finally:
            for writer, _ in self._open.values():
                writer.close()
            self._open.clear()
            if self._tmp is not None and self._tmp.exists():
                shutil.rmtree(self._tmp, ignore_errors=True)
        return False

    # -- writing ---------------------------------------------------------------------------
    def write(self, record: bytes, *, class_id: int, class_name: str, domain: str) -> None:
        """Append one serialized record of this writer's kind.

        class_id / class_name / domain are what the record holds; they feed the manifest
        counts and the per-class shard grouping (the record itself is not re-parsed).
        """
        if self._tmp is None:
            raise RuntimeError("ShardedWriter.write called outside its `with` block")
        if not isinstance(record, bytes) or not record:
            raise ValueError("record must be non-empty serialized bytes")
        class_id = int(class_id)
        known = self._class_names.get(class_id)
        if known is None:
            if self.classes is not None:
                if not 0 <= class_id < len(self.classes):
                    raise ValueError(
                        f"class_id {class_id} ({class_name!r}) outside the class list of "
                        f"{len(self.classes)} classes"
                    )
                if self.classes[class_id] != class_name:
                    raise ValueError(
                        f"class_id {class_id} is {self.classes[class_id]!r} in the class list, "
                        f"record says {class_name!r}"
                    )
            if class_name in self._class_names.values():
                raise ValueError(f"class {class_name!r} written with two ids")
            self._class_names[class_id] = class_name
        elif known != class_name:
            raise ValueError(f"class_id {class_id} written as {known!r} and as {class_name!r}")
        group = {
            "none": (None, None),
            "class": (None, class_name),
            "domain_class": (domain, class_name),
        }[self.group_by]
        slot = self._open.get(group)
        if slot is None:
            name = f"{self.prefix}-{len(self._shards):05d}.tfrecord"
            entry = {"file": name, "records": 0, "bytes": 0, "domain": group[0], "class": group[1]}
            self._shards.append(entry)
            slot = [tf.io.TFRecordWriter(str(self._tmp / name)), entry]
            self._open[group] = slot
        writer, entry = slot
        writer.write(record)
        entry["records"] += 1
        entry["bytes"] += len(record) + 16
        self._per_dc[domain][class_name] += 1
        self._n += 1
        if entry["bytes"] >= self.shard_bytes:
            writer.close()
            del self._open[group]

    def skip(self, path: str, reason: str) -> None:
        """Record an input that the caller skipped (bad image, ...)."""
        self._skipped.append({"path": str(path), "reason": str(reason)})

    @property
    def num_records(self) -> int:
        return self._n

    # -- closing ---------------------------------------------------------------------------
    def _finish(self) -> None:
        for writer, _ in self._open.values():
            writer.close()
        self._open.clear()
        if self._n == 0:
            raise DatasetError(f"no records were written for {self.out_dir}")
        if self.classes is not None:
            classes = self.classes
        else:
            ids = sorted(self._class_names)
            missing = sorted(set(range(ids[-1] + 1)) - set(ids))
            if missing:
                raise DatasetError(
                    f"class ids must be 0..C-1 without gaps; no record for ids {missing[:10]}"
                )
            classes = [self._class_names[i] for i in ids]
        per_class = Counter()
        for counts in self._per_dc.values():
            per_class.update(counts)
        empty = [c for c in classes if per_class[c] == 0]
        if empty and not self.allow_empty_classes:
            raise DatasetError(f"classes without any record in {self.out_dir}: {empty}")
        for entry in self._shards:
            entry["sha256"] = sha256_file(self._tmp / entry["file"])
        domains = sorted(self._per_dc)
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "kind": self.kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "num_records": self._n,
            "classes": classes,
            "domains": domains,
            "group_by": self.group_by,
            "counts": {
                "per_class": {c: per_class[c] for c in classes},
                "per_domain": {d: sum(self._per_dc[d].values()) for d in domains},
                "per_domain_class": {d: dict(sorted(self._per_dc[d].items())) for d in domains},
            },
            "shards": self._shards,
            "skipped": {"count": len(self._skipped), "items": self._skipped},
            "info": self.info,
        }
        with open(self._tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=False)
        old = None
        if self.out_dir.exists():
            old = self.out_dir.with_name(f".{self.out_dir.name}.old-{os.getpid()}")
            os.rename(self.out_dir, old)
        os.rename(self._tmp, self.out_dir)
        self._tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.manifest = manifest


# ---- reading -----------------------------------------------------------------------------------
def records_dir(root: str, split: str, what: str, how_to_make: str) -> str:
    """The record set `<root>/<split>` of a config's `data.root`, checked to hold a manifest.

    A relative `root` is tried against the working directory, then the project root (so a
    config's `data/records/...` works from any directory).

    Args:
      root, split: `config.data.root` and the split folder name (`train`, `test`, ...).
      what: start of the error message, e.g. "zooms: no correspondence records".
      how_to_make: the command that writes these records (ends the error message).

    Raises:
      FileNotFoundError naming the folder and `how_to_make` when there is no manifest.
    """
    from sketch_tf.paths import PROJECT_ROOT

    root = str(root)
    bases = [root] if os.path.isabs(root) else [root, os.path.join(PROJECT_ROOT, root)]
    for base in bases:
        path = os.path.join(base, split)
        if os.path.isfile(os.path.join(path, MANIFEST)):
            return path
    raise FileNotFoundError(
        f"{what} in {os.path.join(root, split)} ({MANIFEST} missing); write them with: "
        f"{how_to_make}"
    )


def read_manifest(dataset_dir: str | os.PathLike, kind: str | None = None) -> dict:
    """Load and check `<dataset_dir>/manifest.json`.

    Raises:
      DatasetError naming the file when it is missing or invalid JSON, lacks required keys,
      has another schema version, or (when `kind` is given) holds another record kind.
    """
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path}: manifest missing (not a prepared dataset, or incomplete)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise DatasetError(f"{path}: missing keys {missing}")
    if manifest["schema_version"] != schema.SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema version {manifest['schema_version']} but this code reads version "
            f"{schema.SCHEMA_VERSION}; re-run prepare_data.py"
        )
    if kind is not None and manifest["kind"] != kind:
        raise DatasetError(f"{path}: holds {manifest['kind']!r} records, expected {kind!r}")
    for entry in manifest["shards"]:
        if not isinstance(entry, dict) or not {"file", "records", "sha256"} <= set(entry):
            raise DatasetError(f"{path}: invalid shard entry {entry!r}")
    return manifest


def list_shards(
    dataset_dir: str | os.PathLike, verify: bool = False, manifest: dict | None = None
) -> list[str]:
    """Paths of a dataset's shards, in manifest order.

    Args:
      dataset_dir: dataset folder.
      verify: also recompute each shard's sha256 (reads every byte once).
      manifest: an already loaded manifest (else read and checked here).

    Raises:
      DatasetError naming the shard when one is missing or its sha256 differs.
    """
    root = Path(dataset_dir)
    manifest = manifest if manifest is not None else read_manifest(root)
    out = []
    for entry in manifest["shards"]:
        path = root / entry["file"]
        if not path.is_file():
            raise DatasetError(f"shard {path} listed in the manifest is missing")
        if verify:
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise DatasetError(
                    f"shard {path} is corrupt: sha256 {digest} != manifest {entry['sha256']}"
                )
        out.append(str(path))
    return out


# ---- record checks -----------------------------------------------------------------------------
# The value list a tf.train.Feature holds (a oneof), in the order decode_proto is asked for them.
_VALUE_LISTS = ("bytes_list", "float_list", "int64_list")
_VALUE_LIST_MESSAGES = ("tensorflow.BytesList", "tensorflow.FloatList", "tensorflow.Int64List")
_VALUE_LIST_DTYPES = (tf.string, tf.float32, tf.int64)
# Problem codes of `_record_problems`, in the order they are reported for one feature.
_MISSING, _WRONG_LIST, _WRONG_COUNT, _WRONG_POINTS, _ID_OUT_OF_RANGE, _OTHER_NAME = range(6)


def _first_per_row(values: tf.Tensor, pad) -> tf.Tensor:
    """Column 0 of a [N, M] decode_proto output (M may be 0); `pad` where a row is empty."""
    padding = tf.fill([tf.shape(values)[0], 1], tf.constant(pad, values.dtype))
    return tf.concat([values, padding], axis=1)[:, 0]


def example_layout(record: tf.Tensor) -> dict[str, tf.Tensor]:
    """What a serialized `tf.train.Example` holds, decoded without a parse spec.

    Unlike `tf.io.parse_single_example` this never fails on a missing key or on a value list
    of another dtype, so the caller can say what is wrong. It fails (`DataLossError`) only
    when `record` is not a serialized `tf.train.Example` at all.

    Args:
      record: scalar tf.string.

    Returns:
      dict of [E] tensors, one row per feature of the record: `keys` (tf.string), `list`
      (int32 index into ("bytes_list", "float_list", "int64_list"), -1 when the feature holds
      no value list), `count` (int32 number of values), `first_int` (int64, the first int64
      value, 0 if none) and `first_bytes` (tf.string, the first bytes value, "" if none).
    """
    _, (features,) = tf.io.decode_proto(record, "tensorflow.Example", ["features"], [tf.string])
    _, (entries,) = tf.io.decode_proto(
        tf.strings.reduce_join(features), "tensorflow.Features", ["feature"], [tf.string]
    )
    _, (keys, features) = tf.io.decode_proto(
        entries, "tensorflow.Features.FeatureEntry", ["key", "value"], [tf.string, tf.string]
    )
    keys = tf.strings.reduce_join(keys, axis=1)
    held, lists = tf.io.decode_proto(
        tf.strings.reduce_join(features, axis=1),
        "tensorflow.Feature",
        list(_VALUE_LISTS),
        [tf.string] * len(_VALUE_LISTS),
    )
    has_list = tf.reduce_any(held > 0, axis=1)
    list_index = tf.where(has_list, tf.argmax(held, axis=1, output_type=tf.int32), -1)
    count, firsts = tf.zeros_like(list_index), []
    for message, dtype, payload in zip(
        _VALUE_LIST_MESSAGES, _VALUE_LIST_DTYPES, lists, strict=True
    ):
        sizes, (values,) = tf.io.decode_proto(
            tf.strings.reduce_join(payload, axis=1), message, ["value"], [dtype]
        )
        count += sizes[:, 0]
        firsts.append(values)
    return {
        "keys": keys,
        "list": list_index,
        "count": count,
        "first_int": _first_per_row(firsts[2], 0),
        "first_bytes": _first_per_row(firsts[0], ""),
    }


def _record_problems(layout: dict, kind: str, classes: list[str] | None):
    """Checks one record's `example_layout` against `schema.feature_rules(kind)`.

    Returns (ok, describe): `ok` a scalar bool; `describe()` builds the scalar tf.string naming
    the first bad feature and what was expected (call it only where `ok` is false, in a
    `tf.cond` branch, so that a good record pays for the comparisons alone).
    """
    rules = schema.feature_rules(kind)
    keys = [r.key for r in rules]
    expected_list = tf.constant([_VALUE_LIST_DTYPES.index(r.dtype) for r in rules], tf.int32)
    required = tf.constant([r.required for r in rules])
    scalar = tf.constant([r.scalar for r in rules])
    # match[f, e]: rule f is about row e of the record. A feature without a value list reads
    # as absent, as it does for tf.io.parse_example.
    match = tf.equal(tf.constant(keys)[:, None], layout["keys"][None, :])
    match = tf.logical_and(match, (layout["list"] >= 0)[None, :])
    present = tf.reduce_any(match, axis=1)
    list_of = tf.reduce_max(tf.where(match, layout["list"][None, :], -1), axis=1)
    count_of = tf.reduce_sum(tf.where(match, layout["count"][None, :], 0), axis=1)
    nothing = tf.zeros([len(rules)], tf.bool)

    problems = [None] * 6
    problems[_MISSING] = required & ~present
    problems[_WRONG_LIST] = present & tf.not_equal(list_of, expected_list)
    usable = present & ~problems[_WRONG_LIST]
    problems[_WRONG_COUNT] = usable & scalar & tf.not_equal(count_of, 1)
    # Every point list holds (x, y) for each point id.
    n_ids = count_of[keys.index(schema.POINT_IDS)] if schema.POINT_IDS in keys else 0
    is_points = tf.constant([r.dtype == tf.float32 for r in rules])
    problems[_WRONG_POINTS] = usable & is_points & tf.not_equal(count_of, 2 * n_ids)
    # The class id indexes the manifest's class list, whose entry is the record's class name.
    id_slot = keys.index(schema.CLASS_ID_KEY[kind])
    name_slot = keys.index(schema.CLASS_KEY[kind])
    good = usable & ~problems[_WRONG_COUNT]
    class_id = tf.reduce_sum(tf.where(match[id_slot], layout["first_int"], 0))
    name = tf.strings.reduce_join(tf.boolean_mask(layout["first_bytes"], match[name_slot]))
    listed = tf.constant("")
    problems[_ID_OUT_OF_RANGE] = problems[_OTHER_NAME] = nothing
    if classes is not None:
        at_id = tf.range(len(rules)) == id_slot
        at_name = tf.range(len(rules)) == name_slot
        in_range = (class_id >= 0) & (class_id < len(classes))
        problems[_ID_OUT_OF_RANGE] = at_id & good[id_slot] & ~in_range
        if classes:
            listed = tf.gather(
                tf.constant(classes), tf.clip_by_value(class_id, 0, len(classes) - 1)
            )
        same_name = tf.equal(name, listed)
        problems[_OTHER_NAME] = at_name & good[id_slot] & in_range & good[name_slot] & ~same_name
    bad = tf.stack(problems, axis=1)  # [F, 6]
    ok = tf.logical_not(tf.reduce_any(bad))

    def describe() -> tf.Tensor:
        slot = tf.argmax(tf.reduce_any(bad, axis=1), output_type=tf.int32)
        key = tf.gather(tf.constant(keys), slot)
        expects = tf.gather(
            tf.constant(
                [
                    f"{kind} schema v{schema.SCHEMA_VERSION} expects "
                    f"{_VALUE_LISTS[_VALUE_LIST_DTYPES.index(r.dtype)]}"
                    + (" with 1 value" if r.scalar else "")
                    for r in rules
                ]
            ),
            slot,
        )
        held = tf.gather(tf.constant(["no value list", *_VALUE_LISTS]), list_of[slot] + 1)
        count = tf.strings.as_string(count_of[slot])
        ident = tf.strings.as_string(class_id)
        texts = [None] * 6
        texts[_MISSING] = tf.strings.join(["missing (", expects, ")"])
        texts[_WRONG_LIST] = tf.strings.join(["holds a ", held, " (", expects, ")"])
        texts[_WRONG_COUNT] = tf.strings.join(["holds ", count, " values (", expects, ")"])
        texts[_WRONG_POINTS] = tf.strings.join(
            ["holds ", count, " floats, expected (x, y) for each of ", tf.strings.as_string(n_ids)]
        )
        texts[_WRONG_POINTS] = tf.strings.join([texts[_WRONG_POINTS], " point ids"])
        texts[_ID_OUT_OF_RANGE] = tf.strings.join(
            ["= ", ident, " is outside the ", str(len(classes or [])), " classes of the manifest"]
        )
        texts[_OTHER_NAME] = tf.strings.join(
            ["= ", name, " but class ", ident, " of the manifest is ", listed]
        )
        problem = tf.gather(tf.stack(texts), tf.argmax(bad[slot], output_type=tf.int32))
        hints = []  # name the kind whose required features the record holds, if another one
        for other in schema.KINDS:
            needed = [r.key for r in schema.feature_rules(other) if r.required]
            if other != kind:
                holds = tf.equal(tf.constant(needed)[:, None], layout["keys"][None, :])
                holds = tf.reduce_all(tf.reduce_any(holds, axis=1))
                hints.append(tf.where(holds, f"; it holds the features of a {other} record", ""))
        features = tf.strings.reduce_join(layout["keys"], separator=" ")
        return tf.strings.join(
            ["feature ", key, " ", problem, *hints, " (features: ", features, ")"]
        )

    return ok, describe


def checked_shard_dataset(
    path, expected_records, kind: str | None = None, classes: list[str] | None = None
) -> tf.data.Dataset:
    """Records of one shard, failing with the shard's name when it cannot be read fully or,
    when `kind` is given, when a record does not hold what that kind's records hold.

    tf.data reports a truncated or corrupt record as an anonymous `DataLossError`. Here the
    shard is read with `ignore_errors` (on a read error TFRecordDataset moves on to the next
    file, i.e. this shard ends early), an end marker is appended, and at the marker the number
    of records read is compared with the manifest's count; a mismatch raises
    `InvalidArgumentError` whose message holds the shard path.

    With `kind`, every record is also decoded with `example_layout` (no parse spec, so nothing
    fails anonymously) and checked against `schema.feature_rules(kind)`: each required feature
    is present, each present feature of the kind holds the expected value list (bytes / int64 /
    float) and, for fixed-length ones, exactly one value; point lists hold 2 floats per point
    id; and, with `classes`, the class id is in `[0, len(classes))` and the record's class name
    is `classes[class_id]`. The first bad record raises `InvalidArgumentError`:
    "record 17 of shard /x/data-00003.tfrecord: feature class_id missing (labelled_image schema
    v1 expects int64_list with 1 value) (features: ...)", naming the kind when the record holds
    another kind's features. A record that is not a serialized `tf.train.Example` at all is
    reported as such. Records before the bad one come through. A feature unknown to the kind
    passes (forward compatibility: a newer writer may add optional features); an optional
    feature that is absent gets its spec default at parse time, as before. (Names in the
    message are written as TF's `Assert` prints strings: quotes and non-ASCII bytes escaped.)

    Args:
      path: scalar tf.string shard path.
      expected_records: scalar int64, the manifest's record count for the shard.
      kind: record kind (one of `schema.KINDS`) to check every record against; None: no check.
      classes: the manifest's class list, for the class id / name check (None: not checked).

    Returns:
      dataset of scalar tf.string serialized records.
    """
    records = tf.data.TFRecordDataset(path).ignore_errors(log_warning=False)
    records = records.map(lambda r: (r, False))
    end = tf.data.Dataset.from_tensors((tf.constant(b"", tf.string), True))
    numbered = records.concatenate(end).enumerate()
    if kind is not None:
        # A record that decode_proto cannot read is dropped by ignore_errors; the gap it leaves
        # between its index and the position after it names it below.
        numbered = numbered.map(lambda index, item: (index, item, example_layout(item[0])))
        numbered = numbered.ignore_errors(log_warning=False).enumerate()

    def where(index) -> tf.Tensor:
        return tf.strings.join(["record ", tf.strings.as_string(index), " of shard ", path])

    def fail(message: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    def check(position, index, item, layout):
        record, is_end = item
        count_ok = tf.logical_or(tf.logical_not(is_end), tf.equal(index, expected_records))
        count_check = tf.debugging.Assert(
            count_ok,
            [
                "corrupt or truncated TFRecord shard",
                path,
                "records read:",
                index,
                "manifest says:",
                expected_records,
            ],
            summarize=4,
        )
        checks = [count_check]
        if layout is not None:
            decoded = tf.cond(
                tf.equal(position, index),
                lambda: tf.constant(True),
                lambda: fail(
                    tf.strings.join(
                        [where(position), ": not a serialized tf.train.Example (cannot be decoded)"]
                    )
                ),
            )
            ok, describe = _record_problems(layout, kind, classes)
            with tf.control_dependencies([decoded]):
                checks.append(
                    tf.cond(
                        tf.logical_or(is_end, ok),
                        lambda: tf.constant(True),
                        lambda: fail(tf.strings.join([where(index), ": ", describe()])),
                    )
                )
        with tf.control_dependencies(checks):
            return tf.identity(record), is_end

    if kind is None:
        checked = numbered.map(lambda index, item: check(index, index, item, None))
    else:
        checked = numbered.map(lambda position, numbered_item: check(position, *numbered_item))
    return checked.filter(lambda record, is_end: tf.logical_not(is_end)).map(
        lambda record, is_end: record
    )


#: Environment variable that turns the in-graph record check on (`record_dataset`).
CHECK_RECORDS_ENV = "SKETCH_TF_CHECK_RECORDS"


def record_dataset(
    dataset_dir: str | os.PathLike,
    shards: list[dict] | None = None,
    shuffle_shards: bool = False,
    seed: int | None = None,
    cycle_length: int = 8,
    deterministic: bool = True,
    manifest: dict | None = None,
    check_records: bool | None = None,
) -> tf.data.Dataset:
    """Serialized records of a dataset, interleaved across shards and checked.

    Each shard is read by `checked_shard_dataset`: its record count is checked against the
    manifest and every record against the manifest's kind and class list, so a truncated or
    corrupt shard, or a record missing a feature, holding a feature of the wrong dtype, of
    another kind or schema, or with a class id / name the manifest does not list, raises
    `InvalidArgumentError` naming the shard, the record's index in it and the feature.

    Args:
      dataset_dir: dataset folder (manifest is read and checked unless given).
      shards: subset of manifest shard entries to read (default: all).
      shuffle_shards: shuffle the shard order every epoch (seeded by `seed`).
      cycle_length: shards read concurrently (each contributes one record in turn).
      deterministic: keep a fixed element order for a given seed.
      manifest: the dataset's already loaded manifest.
      check_records: check each record's features in the graph (see
        `checked_shard_dataset`); None (default): when the environment variable
        `SKETCH_TF_CHECK_RECORDS` is 1. Off by default: the check costs ~155 us per record
        (a PACS JPEG decodes in ~180 us) and tripled the time of the tests that build many
        per-class streams of tiny images; `prepare_data.py --verify` checks the same rules
        once, and a training input that fails names it. The record count is checked
        either way.

    Returns:
      dataset of scalar tf.string; one pass over the chosen shards (call `.repeat()`).
    """
    root = Path(dataset_dir)
    manifest = manifest if manifest is not None else read_manifest(root)
    entries = manifest["shards"] if shards is None else shards
    if not entries:
        raise DatasetError(f"{root}: no shards selected")
    paths = list_shards(root, manifest={"shards": entries})
    counts = [int(e["records"]) for e in entries]
    files = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(counts, tf.int64))
    )
    if shuffle_shards and len(paths) > 1:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if check_records is None:
        check_records = os.environ.get(CHECK_RECORDS_ENV, "") == "1"
    kind = manifest.get("kind") if check_records else None
    classes = list(manifest["classes"]) if kind is not None and "classes" in manifest else None

    def shard_records(path, expected_records):
        return checked_shard_dataset(path, expected_records, kind=kind, classes=classes)

    if len(paths) == 1:
        return files.flat_map(shard_records)
    return files.interleave(
        shard_records,
        cycle_length=min(cycle_length, len(paths)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


# ---- whole-dataset verification ----------------------------------------------------------------
#: Keys holding encoded images, per kind (decoded by `verify_dataset` as training would).
_IMAGE_KEYS = {
    schema.KIND_LABELLED_IMAGE: (schema.IMAGE,),
    schema.KIND_CORRESPONDENCE_VIEW: (schema.IMAGE,),
    schema.KIND_CORRESPONDENCE_PAIR: (schema.IMAGE_A, schema.IMAGE_B),
}


def verify_dataset(dataset_dir: str | os.PathLike, decode_images: bool = True) -> dict:
    """Reads every record of a dataset once and lists every bad one (training stops at the
    first; this names them all). `prepare_data.py --verify=DIR` runs it.

    Checks: each shard's sha256 and record count against the manifest, each record against
    the manifest's kind and classes (`checked_shard_dataset`'s rules), and, with
    `decode_images`, that each image feature decodes with the training decoder
    (`tf.io.decode_image`): corrupt image bytes inside a valid shard are found here.

    Returns:
      {"dataset": path, "records": records read, "bad": [{"shard", "record" (index in the
      shard, or None for a whole-shard problem), "source" (the record's source path if it
      has one), "problem"}]}.

    Raises:
      DatasetError when the manifest itself is missing or invalid.
    """
    root = Path(dataset_dir)
    manifest = read_manifest(root)
    kind = manifest["kind"]
    rules = {r.key: r for r in schema.feature_rules(kind)}
    lists = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}
    bad: list[dict] = []
    total = 0

    def report(shard, record, problem, source=""):
        bad.append({"shard": str(shard), "record": record, "source": source, "problem": problem})

    for entry in manifest["shards"]:
        path = root / entry["file"]
        if not path.is_file():
            report(path, None, "missing")
            continue
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            report(path, None, f"sha256 {digest} != manifest {entry['sha256']}")
        read = 0
        try:
            for serialized in tf.data.TFRecordDataset(str(path)):
                problem, source = _record_problem(
                    serialized.numpy(), kind, rules, lists, manifest["classes"], decode_images
                )
                if problem:
                    report(path, read, problem, source)
                read += 1
        except tf.errors.OpError as err:
            report(path, read, f"unreadable from here on ({err.message.strip()})")
        total += read
        if read != int(entry["records"]):
            report(path, None, f"{read} records read, manifest says {entry['records']}")
    return {"dataset": str(root), "records": total, "bad": bad}


def _record_problem(serialized, kind, rules, lists, classes, decode_images) -> tuple[str, str]:
    """(problem or "", source) of one serialized record (see `verify_dataset`)."""
    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as err:  # protobuf's DecodeError; any failure means the same here
        return f"not a serialized tf.train.Example ({err})", ""
    feature = example.features.feature
    source_values = feature[schema.SOURCE].bytes_list.value if schema.SOURCE in feature else []
    source = source_values[0].decode("utf-8", "replace") if source_values else ""
    for key, rule in rules.items():
        if key not in feature or feature[key].WhichOneof("kind") is None:
            if rule.required:
                return f"feature {key} missing ({kind} expects {lists[rule.dtype]})", source
            continue
        held = feature[key].WhichOneof("kind")
        if held != lists[rule.dtype]:
            return f"feature {key} holds a {held} ({kind} expects {lists[rule.dtype]})", source
        if rule.scalar and len(getattr(feature[key], held).value) != 1:
            return f"feature {key} holds {len(getattr(feature[key], held).value)} values", source
    class_key = schema.CLASS_ID_KEY[kind]
    class_id = feature[class_key].int64_list.value[0]
    if not 0 <= class_id < len(classes):
        return f"feature {class_key} = {class_id} outside the {len(classes)} classes", source
    if decode_images:
        for key in _IMAGE_KEYS[kind]:
            try:
                tf.io.decode_image(feature[key].bytes_list.value[0], expand_animations=False)
            except tf.errors.OpError as err:
                return f"feature {key}: not a decodable image ({err.message.strip()})", source
    return "", source
