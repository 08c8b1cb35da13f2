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
`DataLossError`.
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


def checked_shard_dataset(path, expected_records) -> tf.data.Dataset:
    """Records of one shard, failing with the shard's name when it cannot be read fully.

    tf.data reports a truncated or corrupt record as an anonymous `DataLossError`. Here the
    shard is read with `ignore_errors` (on a read error TFRecordDataset moves on to the next
    file, i.e. this shard ends early), an end marker is appended, and at the marker the number
    of records read is compared with the manifest's count; a mismatch raises
    `InvalidArgumentError` whose message holds the shard path.

    Args:
      path: scalar tf.string shard path.
      expected_records: scalar int64, the manifest's record count for the shard.

    Returns:
      dataset of scalar tf.string serialized records.
    """
    records = tf.data.TFRecordDataset(path).ignore_errors(log_warning=False)
    records = records.map(lambda r: (r, False))
    end = tf.data.Dataset.from_tensors((tf.constant(b"", tf.string), True))

    def check(index, item):
        record, is_end = item
        ok = tf.logical_or(tf.logical_not(is_end), tf.equal(index, expected_records))
        assertion = tf.debugging.Assert(
            ok,
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
        with tf.control_dependencies([assertion]):
            return tf.identity(record), is_end

    checked = records.concatenate(end).enumerate().map(check)
    return checked.filter(lambda record, is_end: tf.logical_not(is_end)).map(
        lambda record, is_end: record
    )


def record_dataset(
    dataset_dir: str | os.PathLike,
    shards: list[dict] | None = None,
    shuffle_shards: bool = False,
    seed: int | None = None,
    cycle_length: int = 8,
    deterministic: bool = True,
    manifest: dict | None = None,
) -> tf.data.Dataset:
    """Serialized records of a dataset, interleaved across shards and count-checked.

    Args:
      dataset_dir: dataset folder (manifest is read and checked unless given).
      shards: subset of manifest shard entries to read (default: all).
      shuffle_shards: shuffle the shard order every epoch (seeded by `seed`).
      cycle_length: shards read concurrently (each contributes one record in turn).
      deterministic: keep a fixed element order for a given seed.

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
    if len(paths) == 1:
        return files.flat_map(checked_shard_dataset)
    return files.interleave(
        checked_shard_dataset,
        cycle_length=min(cycle_length, len(paths)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
