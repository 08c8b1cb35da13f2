"""Apache Beam data preparation: the sources' conversion on DirectRunner, Dataflow, Flink, Spark.

`prepare_beam(source, root, out_dir, pipeline_args, **options)` writes the same dataset as
`sources.prepare(source, root, out_dir, **options)` (same records, same manifest up to shard
layout: shard files, their order and sha256 differ) with the work spread over Beam workers:

    units (files / images) -> read items -> Reshuffle -> convert + write shards -> commit

- the conversion is the source plan's own `items` / `convert` (`sources.common.SourcePlan`),
  the very functions the single-process `write_plan` calls;
- each bundle writes its records into `<prefix>.tmp-*` next to `out_dir` (one open shard per
  shard group, rolled over at `shard_bytes`) and reports each closed shard (records, bytes,
  sha256, counts); a bad input (with or without `skip_bad`) is reported, not raised, so the
  driver can raise the same `BadInputError` as the single-process path, for the same input
  (the first bad one in single-process order);
- after the pipeline, the driver keeps only the reported shards (a retried bundle's files are
  dropped), renames them `data-NNNNN.tfrecord`, writes `manifest.json` and renames the temp
  folder to `out_dir`. Any failure removes the temp folder: a complete dataset or nothing.

Sources covered: `quickdraw` and `folders` (`PLANNERS`). `sketchzooms` and `style` are not:
their datasets are small (thousands of rows) and their readers are not split into plan units
yet; `prepare_beam` rejects them with a clear error.

`root` and `out_dir` must be paths every worker can open (local disk for DirectRunner; a file
system mounted on all workers for Flink / Spark / Dataflow): the sources read with Python's
`open`, not through Beam's file systems, so `gs://` paths are not supported yet.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from sketch_tf.data import schema
from sketch_tf.data.sources import folders, quickdraw
from sketch_tf.data.sources.common import BadInputError, SourcePlan, split_options
from sketch_tf.data.tfrecord import MANIFEST, DatasetError, sha256_file

#: Source name -> (plan builder, default group_by) of the sources Beam can run.
PLANNERS = {
    "quickdraw": (quickdraw.plan, quickdraw.DEFAULT_GROUP_BY),
    "folders": (folders.plan, folders.DEFAULT_GROUP_BY),
}
INSTALL_HINT = "apache_beam is not installed: pip install -e '.[beam]'"
_COMMIT = "_beam_commit.json"
_ERROR_TYPES = {"BadInputError": BadInputError, "OSError": OSError}


def import_beam():
    """The `apache_beam` module; ImportError with the install command when it is missing."""
    try:
        import apache_beam
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return apache_beam


def unknown_pipeline_args(pipeline_args: list[str]) -> list[str]:
    """The arguments of `pipeline_args` that no Beam `PipelineOptions` class defines (a
    misspelt flag would otherwise be dropped by Beam with a log line only)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    unknown: list[str] = []

    def check(parser):  # called with the parser holding every options class's flags
        unknown.extend(parser.parse_known_args(list(pipeline_args))[1])

    PipelineOptions(list(pipeline_args)).get_all_options(add_extra_args_fn=check)
    return [a for a in unknown if a.startswith("-")]


def _group(group_by: str, domain: str, class_name: str) -> tuple[str | None, str | None]:
    """(domain, class) a shard holds under `group_by` (None: mixed), as ShardedWriter does."""
    return {
        "none": (None, None),
        "class": (None, class_name),
        "domain_class": (domain, class_name),
    }[group_by]


def _make_dofns(beam):
    """The pipeline's DoFn classes (defined here so that this module imports without Beam)."""

    class ReadItems(beam.DoFn):
        """unit -> its items; a unit that cannot be read goes to the "errors" output."""

        def __init__(self, plan: SourcePlan):
            self.plan = plan

        def process(self, unit):
            try:
                yield from self.plan.items(unit)
            except (ValueError, OSError) as e:
                # units are (index, ...) tuples or items with an `order`
                key = list(unit.order) if hasattr(unit, "order") else [unit[0]]
                yield beam.pvalue.TaggedOutput("errors", ("error", _error(key, e)))

    class ConvertAndWrite(beam.DoFn):
        """item -> record written to this bundle's open shard of its group.

        Outputs ("shard", descriptor) per closed shard, ("bad", {...}) per bad input and
        ("error", {...}) per input that fails the run. Shards are written here and not with
        `beam.io.WriteToTFRecord` because the dataset format needs data-dependent shard
        groups (per class / per (domain, class)), size-bounded shards, and per-shard counts
        and sha256 for the manifest, none of which that sink provides; a bundle's shards are
        committed only through its outputs, so a retried bundle leaves only orphan files,
        which the driver deletes.
        """

        def __init__(self, plan: SourcePlan, tmp_dirs: dict, shard_bytes: int, group_by: str):
            self.plan = plan
            self.tmp_dirs = tmp_dirs
            self.shard_bytes = shard_bytes
            self.group_by = group_by

        def start_bundle(self):
            self._open = {}  # (part, group) -> shard state

        def process(self, item):
            try:
                converted = self.plan.convert(item)
            except BadInputError as e:
                yield "bad", {"order": list(item.order), "part": item.part, "path": item.where,
                              "reason": str(e)}  # fmt: skip
                return
            except ValueError as e:
                yield "error", _error(list(item.order), e)
                return
            group = _group(self.group_by, converted.domain, converted.class_name)
            key = (item.part, group)
            shard = self._open.get(key)
            if shard is None:
                import tensorflow as tf

                name = f"{uuid.uuid4().hex}.tfrecord"
                path = os.path.join(self.tmp_dirs[item.part], name)
                shard = {"writer": tf.io.TFRecordWriter(path), "path": path, "part": item.part,
                         "file": name, "records": 0, "bytes": 0, "domain": group[0],
                         "class": group[1], "first": list(item.order),
                         "counts": defaultdict(Counter)}  # fmt: skip
                self._open[key] = shard
            shard["writer"].write(converted.record)
            shard["records"] += 1
            shard["bytes"] += len(converted.record) + 16
            shard["first"] = min(shard["first"], list(item.order))
            shard["counts"][converted.domain][converted.class_name] += 1
            if shard["bytes"] >= self.shard_bytes:
                del self._open[key]
                yield "shard", _close(shard)

        def finish_bundle(self):
            from apache_beam.transforms.window import GlobalWindows

            for shard in self._open.values():
                yield GlobalWindows.windowed_value(("shard", _close(shard)))
            self._open = {}

    return ReadItems, ConvertAndWrite


def _error(order: list, error: Exception) -> dict:
    """A failure that ends the run, as plain data: (order key, exception type, message)."""
    kind = "ValueError"
    if isinstance(error, BadInputError):
        kind = "BadInputError"
    elif isinstance(error, OSError):
        kind = "OSError"
    return {"order": order, "type": kind, "message": str(error), "skippable": False}


def _close(shard: dict) -> dict:
    """Closes a shard file; its descriptor (counts as plain dicts, sha256 of the file)."""
    shard["writer"].close()
    out = {k: shard[k] for k in ("part", "file", "records", "bytes", "domain", "class", "first")}
    out["sha256"] = sha256_file(shard["path"])
    out["counts"] = {d: dict(c) for d, c in shard["counts"].items()}
    return out


def _write_commit(results: list, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f)


def prepare_beam(
    source_name: str,
    root,
    out_dir,
    pipeline_args: list[str],
    **options,
) -> dict:
    """`sources.prepare(source_name, root, out_dir, ...)` as an Apache Beam pipeline.

    Args:
      source_name: a key of `PLANNERS` ("quickdraw", "folders").
      root, out_dir: dataset root and output folder (see the module docstring for paths).
      pipeline_args: Beam pipeline options, e.g. `["--runner=DirectRunner",
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"]`.
      **options: as `sources.prepare`: the output options (`skip_bad`, `shard_bytes`,
        `group_by`, default the source's own, `overwrite`) and the source's `plan` arguments
        (`size=`, `layout=`, ...); see `common.split_options`.

    Returns:
      the manifest dict (with several parts, e.g. folders' `test_fraction`: {part: manifest}).

    Raises:
      ImportError (with the install command) without apache_beam; ValueError for a source
      Beam does not run or bad options; BadInputError naming the first bad input (in the
      single-process order) when `skip_bad` is off; DatasetError as `ShardedWriter`.
    """
    beam = import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    if source_name not in PLANNERS:
        raise ValueError(
            f"source {source_name!r} has no Beam pipeline; Beam runs {sorted(PLANNERS)} "
            "(convert it without --runner)"
        )
    planner, default_group_by = PLANNERS[source_name]
    write_options, plan_options = split_options(default_group_by, **options)
    skip_bad, shard_bytes, group_by, overwrite = write_options
    if group_by not in ("none", "class", "domain_class"):
        raise ValueError(f"group_by must be none, class or domain_class, got {group_by!r}")
    if int(shard_bytes) <= 0:
        raise ValueError(f"shard_bytes must be > 0, got {shard_bytes}")
    plan = planner(root, **plan_options)
    out_dir = Path(out_dir).expanduser().absolute()
    targets = {part: out_dir / part if part else out_dir for part in plan.parts}
    for target in targets.values():
        if target.exists() and not overwrite:
            raise DatasetError(f"output folder {target} exists (pass overwrite=True)")
    tmp_dirs: dict[str, str] = {}
    try:
        for part, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp_dirs[part] = tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        commit_path = os.path.join(tmp_dirs[plan.parts[0]], _COMMIT)
        read_items, convert_and_write = _make_dofns(beam)
        with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
            read = (
                pipeline
                | "Units" >> beam.Create(plan.units())
                | "ReadItems" >> beam.ParDo(read_items(plan)).with_outputs("errors", main="items")
            )
            results = (
                read.items
                | "Spread" >> beam.Reshuffle()
                | "ConvertAndWrite"
                >> beam.ParDo(convert_and_write(plan, tmp_dirs, int(shard_bytes), group_by))
            )
            _ = (
                (results, read.errors)
                | "Merge" >> beam.Flatten()
                | "Collect" >> beam.combiners.ToList()
                | "Commit" >> beam.Map(_write_commit, commit_path)
            )
        with open(commit_path) as f:
            results = json.load(f)
        os.remove(commit_path)
        manifests = _finish(plan, results, targets, tmp_dirs, group_by, skip_bad)
    finally:
        for tmp in tmp_dirs.values():
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return manifests[""] if "" in manifests else manifests


def _finish(plan, results, targets, tmp_dirs, group_by, skip_bad) -> dict:
    """Checks the pipeline's results, writes every part's manifest and renames the parts."""
    by_kind = defaultdict(list)
    for kind, value in results:
        by_kind[kind].append(value)
    failures = list(by_kind["error"])
    if not skip_bad:
        failures += [
            {
                "order": b["order"],
                "type": "BadInputError",
                "message": b["reason"],
                "skippable": True,
            }
            for b in by_kind["bad"]
        ]
    if failures:  # the one the single-process path meets first
        first = min(failures, key=lambda e: e["order"])
        if first["skippable"]:
            raise BadInputError(f"{first['message']} (pass skip_bad=True / --skip_bad to skip it)")
        raise _ERROR_TYPES.get(first["type"], ValueError)(first["message"])
    manifests = {}
    for part, target in targets.items():
        shards = sorted(
            (s for s in by_kind["shard"] if s["part"] == part),
            key=lambda s: (s["domain"] or "", s["class"] or "", s["first"]),
        )
        skipped = sorted((b for b in by_kind["bad"] if b["part"] == part), key=lambda b: b["order"])
        manifests[part] = _manifest(plan, part, target, shards, skipped, group_by)
    tmp_paths = {part: Path(tmp_dirs[part]) for part in targets}
    for part in targets:
        tmp = tmp_paths[part]
        written = manifests[part].pop("_sources")
        keep = set(written)
        for path in tmp.iterdir():  # orphans of retried bundles; the committed ones are renamed
            if path.name not in keep:
                path.unlink()
        for entry, shard in zip(manifests[part]["shards"], written, strict=True):
            os.rename(tmp / shard, tmp / entry["file"])
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifests[part], f, indent=1, sort_keys=False)
    for part, target in targets.items():
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
        os.rename(tmp_paths[part], target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return manifests


def _manifest(plan, part, target, shards, skipped, group_by) -> dict:
    """The manifest `ShardedWriter` writes, from the shard descriptors (same keys, order)."""
    if not shards:
        raise DatasetError(f"no records were written for {target}")
    per_dc: dict[str, Counter] = defaultdict(Counter)
    for s in shards:
        for d, counts in s["counts"].items():
            per_dc[d].update(counts)
    per_class = Counter()
    for counts in per_dc.values():
        per_class.update(counts)
    empty = [c for c in plan.classes if per_class[c] == 0]
    if empty:
        raise DatasetError(f"classes without any record in {target}: {empty}")
    domains = sorted(per_dc)
    entries = [
        {"file": f"data-{i:05d}.tfrecord", "records": s["records"], "bytes": s["bytes"],
         "domain": s["domain"], "class": s["class"], "sha256": s["sha256"]}
        for i, s in enumerate(shards)
    ]  # fmt: skip
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "kind": plan.kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_records": sum(s["records"] for s in shards),
        "classes": list(plan.classes),
        "domains": domains,
        "group_by": group_by,
        "counts": {
            "per_class": {c: per_class[c] for c in plan.classes},
            "per_domain": {d: sum(per_dc[d].values()) for d in domains},
            "per_domain_class": {d: dict(sorted(per_dc[d].items())) for d in domains},
        },
        "shards": entries,
        "skipped": {
            "count": len(skipped),
            "items": [{"path": b["path"], "reason": b["reason"]} for b in skipped],
        },
        "info": {"source": plan.source, "root": str(plan.root), **plan.info(part)},
        "_sources": [s["file"] for s in shards],
    }
