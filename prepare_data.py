"""Converts a dataset to sharded TFRecords + manifest.json.

Embedded default data (no download): the procedural shape world, one dataset per task:

  python prepare_data.py --source=synthetic --task=zs_sbir --out=data/records/synthetic_zs_sbir
  python prepare_data.py --source=synthetic --task=zooms --out=... --n_per_category=12 --seed=0

Real layouts (see data/README.md for where each dataset comes from):

  python prepare_data.py --source=folders --root=../shared/data/pacs --out=data/records/pacs
  python prepare_data.py --source=folders --root=../shared/data/pacs --out=data/records/pacs_style \
      --style_domains=art_painting,cartoon,photo --test_fraction=0.3     # train/ + test/
  python prepare_data.py --source=quickdraw --root=path/to/ndjson --out=... --size=256
  python prepare_data.py --source=sketchzooms --root=path/to/SketchZooms --split=train --out=...

QMUL Shoes / Chairs V1 (fine-grained SBIR; train/ + val/ carved by object from the train split,
then test/ added beside them when the test files are at hand):

  python prepare_data.py --source=qmul --root=../shared/data/qmul/shoes --category=shoes \
      --split=train --out=data/records/qmul_shoes
  python prepare_data.py --source=qmul --root=path/to/qmul/shoes --category=shoes \
      --split=test --out=data/records/qmul_shoes

Derived data of a config (the cached features of a frozen pretrained trunk, beside the records
or in --config.data.cache_dir), computed now instead of on the first training run:

  python prepare_data.py --derived --config=configs/zs_sbir.py:pacs

Apache Beam (pip install -e '.[beam]'; sources quickdraw and folders): --runner picks the Beam
runner, and the flags this script does not define are Beam pipeline options (data/README.md has
the command lines for Dataflow, Flink and Spark):

  python prepare_data.py --source=quickdraw --root=path/to/ndjson --out=... --runner=DirectRunner \
      --direct_num_workers=2 --direct_running_mode=multi_processing

Check existing records (every bad shard or record listed, image bytes decoded; exit 1 when
one is bad; training stops at the first and names this command):

  python prepare_data.py --verify=data/records/pacs

Output is written to a temporary folder and renamed at the end: an interrupted run never
leaves a dataset that looks complete. Unreadable inputs fail the run naming the file, unless
--skip_bad (then they are skipped and listed in the manifest).
"""

import json
import os

from absl import app, flags

from sketch_tf import cli

_SOURCE = flags.DEFINE_enum(
    "source",
    "synthetic",
    ["synthetic", "folders", "quickdraw", "sketchzooms", "style", "qmul"],
    "Where the data comes from.",
)
_OUT = flags.DEFINE_string("out", None, "Output dataset folder (required).")
_ROOT = flags.DEFINE_string("root", None, "Root folder of a real dataset layout.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output dataset.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Skip (and count) unreadable inputs.")
_SHARD_MB = flags.DEFINE_integer("shard_mb", 64, "Target shard size in MiB.")
_RUNNER = flags.DEFINE_string(
    "runner",
    "",
    "Apache Beam runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...) for "
    "--source=quickdraw / folders; empty: one process, no Beam. Flags not defined here are "
    "passed to Beam as pipeline options.",
)
# synthetic
_TASK = flags.DEFINE_enum("task", "zs_sbir", ["zooms", "zs_sbir", "style"], "Synthetic: task.")
_SEED = flags.DEFINE_integer("seed", 0, "Synthetic: generator seed (same seed, same bytes).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Synthetic: image side in pixels.")
_N_PER_CATEGORY = flags.DEFINE_integer("n_per_category", 20, "Synthetic: instances per category.")
_TEST_FRACTION = flags.DEFINE_float(
    "test_fraction",
    0.2,
    "Held-out instance share (synthetic; folders / style only when given: <out>/train, /test).",
)
_CATEGORIES = flags.DEFINE_list("categories", None, "Subset of categories / classes to write.")
_N_POINTS = flags.DEFINE_integer("n_points", 64, "Synthetic zooms: points per pair.")
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "Synthetic: processes rendering categories in parallel (0 = one per CPU)."
)
# real layouts
_LAYOUT = flags.DEFINE_enum(
    "layout", "auto", ["auto", "domain_class", "class"], "folders: folder layout."
)
_DOMAIN = flags.DEFINE_string("domain", None, "folders: domain name for the <root>/<class> layout.")
_ALLOW_MISSING = flags.DEFINE_bool(
    "allow_missing", False, "folders: accept a class absent from some domain (else an error)."
)
_STYLE_DOMAINS = flags.DEFINE_list(
    "style_domains", None, "folders: domains labelled as styles (style_id, content_id)."
)
_SIZE = flags.DEFINE_integer("size", 256, "quickdraw: raster size in pixels.")
_LINE_WIDTH = flags.DEFINE_float("line_width", 3.0, "quickdraw: stroke width in pixels.")
_SPLIT = flags.DEFINE_string(
    "split", "train", "sketchzooms: csv split (train or test); qmul: split (train or test)."
)
_CATEGORY = flags.DEFINE_string(
    "category", None, "qmul: file prefix (shoes, chairs); default: the one found under --root."
)
_VAL_FRACTION = flags.DEFINE_float(
    "val_fraction", 0.2, "qmul --split=train: share of objects carved out as <out>/val (0: none)."
)
_VAL_SEED = flags.DEFINE_integer("val_seed", 0, "qmul --split=train: seed of the val carve.")
_CSV = flags.DEFINE_string("csv_path", None, "style: CSV of image, content, style columns.")
_SQLITE = flags.DEFINE_string("sqlite_path", None, "style: BAM!-like sqlite database.")
_VERIFY = flags.DEFINE_string(
    "verify",
    None,
    "Check a records folder (or a root of split folders) and list every bad shard / record: "
    "counts, sha256, features, image bytes. Exit 1 when one is bad.",
)
# derived data
_DERIVED = flags.DEFINE_bool(
    "derived", False, "Compute the derived data (feature caches) of --config's records."
)
_CONFIG = cli.define_config_flag(trained_run=False)


def _derived() -> None:
    """--derived: the task's caches for training and evaluation (`Task.precompute`)."""
    from sketch_tf.families import get_task_class
    from sketch_tf.train import loop
    from sketch_tf.train import run as run_lib
    from sketch_tf.train.config import ConfigError, validate_config

    config = _CONFIG.value
    if config is None:
        cli.fail("--derived needs --config=configs/<family>.py:<variant>")
    try:
        validate_config(config)
    except ConfigError as e:
        cli.fail(str(e))
    task = get_task_class(config.task)(config)
    state = loop.build_state(task)
    if config.get("init") and config.init.get("workdir"):
        run_lib.apply_init(state, config.init, print)
    try:
        paths = task.precompute(state.models)
    except (ValueError, OSError) as e:
        cli.fail(str(e))
    print(json.dumps({"task": config.task, "derived": paths}))


def _parse_flags(argv: list[str]) -> list[str]:
    """`cli.parse_flags_or_exit`, except that flags not defined here stay in argv: main()
    hands them to Beam with --runner (after checking that Beam knows them) and fails on them
    without it."""
    try:
        return flags.FLAGS(argv, known_only=True)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError):
        return cli.parse_flags_or_exit(argv)  # the same error report as the other scripts


def _beam_args(extra: list[str]) -> list[str] | None:
    """Beam pipeline options of the command line (None without --runner)."""
    if not _RUNNER.value:
        if extra:
            cli.fail(
                f"unexpected arguments: {extra} (flags not defined here are Beam pipeline "
                "options, accepted only with --runner)"
            )
        return None
    if _SOURCE.value not in ("quickdraw", "folders") or _DERIVED.value:
        cli.fail(f"--runner: Beam runs --source=quickdraw and folders only, not {_SOURCE.value}")
    from sketch_tf.data import beam

    try:
        beam.import_beam()
    except ImportError as e:
        cli.fail(str(e))
    unknown = beam.unknown_pipeline_args(extra)
    if unknown:
        cli.fail(f"unknown flags (neither prepare_data.py nor Beam defines them): {unknown}")
    return [f"--runner={_RUNNER.value}", *extra]


def _verify(folder: str) -> None:
    """--verify: `tfrecord.verify_dataset` of the folder, or of each split folder in it."""
    import sys

    from sketch_tf.data import tfrecord

    if os.path.isfile(os.path.join(folder, tfrecord.MANIFEST)):
        datasets = [folder]
    else:
        datasets = sorted(
            os.path.join(folder, d)
            for d in (os.listdir(folder) if os.path.isdir(folder) else [])
            if os.path.isfile(os.path.join(folder, d, tfrecord.MANIFEST))
        )
    if not datasets:
        cli.fail(f"--verify={folder}: no {tfrecord.MANIFEST} in it or in its sub-folders")
    bad = 0
    for dataset in datasets:
        try:
            report = tfrecord.verify_dataset(dataset)
        except tfrecord.DatasetError as e:
            cli.fail(str(e))
        for b in report["bad"]:
            where = "shard" if b["record"] is None else f"record {b['record']} of shard"
            source = f" (source {b['source']})" if b["source"] else ""
            print(f"{where} {b['shard']}{source}: {b['problem']}")
        bad += len(report["bad"])
        print(json.dumps({"dataset": dataset, "records": report["records"],
                          "bad": len(report["bad"])}))  # fmt: skip
    if bad:
        print(f"{bad} bad shard(s) / record(s): prepare the data again from its source "
              "(with --skip_bad to leave unreadable inputs out)", file=sys.stderr)  # fmt: skip
        sys.exit(1)


def main(argv):
    beam_args = _beam_args(argv[1:])
    if _VERIFY.value:
        return _verify(_VERIFY.value)
    if _DERIVED.value:
        return _derived()
    if not _OUT.value:
        cli.fail("--out is required")
    # qmul writes part folders into --out (test/ beside train/ and val/) and refuses existing
    # parts itself.
    if os.path.exists(_OUT.value) and not _OVERWRITE.value and _SOURCE.value != "qmul":
        cli.fail(f"--out={_OUT.value} already exists (use --overwrite to replace it)")
    if _SHARD_MB.value <= 0:
        cli.fail(f"--shard_mb must be > 0, got {_SHARD_MB.value}")
    shard_bytes = _SHARD_MB.value << 20
    if _SOURCE.value == "synthetic":
        if _WORKERS.value < 0:
            cli.fail(f"--workers must be >= 0 (0 = one per CPU), got {_WORKERS.value}")
        if _N_PER_CATEGORY.value < 2:
            cli.fail(f"--n_per_category must be >= 2, got {_N_PER_CATEGORY.value}")
        if not 0 < _TEST_FRACTION.value < 1:
            cli.fail(f"--test_fraction must be in (0, 1), got {_TEST_FRACTION.value}")
        from sketch_tf.data.synthetic import CATEGORIES
        from sketch_tf.data.synthetic.prepare import default_workers, prepare_synthetic

        unknown = sorted(set(_CATEGORIES.value or []) - set(CATEGORIES))
        if unknown:
            cli.fail(f"--categories: unknown {unknown}; known: {CATEGORIES}")
        manifests = prepare_synthetic(
            _TASK.value,
            _OUT.value,
            seed=_SEED.value,
            image_size=_IMAGE_SIZE.value,
            n_per_category=_N_PER_CATEGORY.value,
            test_fraction=_TEST_FRACTION.value,
            categories=_CATEGORIES.value,
            n_points=_N_POINTS.value,
            overwrite=_OVERWRITE.value,
            shard_bytes=shard_bytes,
            workers=_WORKERS.value or default_workers(),
        )
        summary = {split: m.get("num_records") for split, m in manifests.items()}
    else:
        if not _ROOT.value:
            cli.fail(f"--root is required for --source={_SOURCE.value}")
        if not os.path.isdir(_ROOT.value):
            cli.fail(f"--root={_ROOT.value} is not a folder")
        from sketch_tf.data import sources

        options = {
            "skip_bad": _SKIP_BAD.value,
            "shard_bytes": shard_bytes,
            "overwrite": _OVERWRITE.value,
        }
        if _SOURCE.value == "folders":
            options.update(layout=_LAYOUT.value, domain=_DOMAIN.value)
            options.update(style_domains=_STYLE_DOMAINS.value, allow_missing=_ALLOW_MISSING.value)
            if flags.FLAGS["test_fraction"].present:
                options.update(test_fraction=_TEST_FRACTION.value)
        elif _SOURCE.value == "quickdraw":
            options.update(
                size=_SIZE.value, line_width=_LINE_WIDTH.value, categories=_CATEGORIES.value
            )
        elif _SOURCE.value == "sketchzooms":
            options.update(split=_SPLIT.value, categories=_CATEGORIES.value)
        elif _SOURCE.value == "qmul":
            options.update(split=_SPLIT.value, category=_CATEGORY.value)
            options.update(val_fraction=_VAL_FRACTION.value, val_seed=_VAL_SEED.value)
        elif _SOURCE.value == "style":
            options.update(csv_path=_CSV.value, sqlite_path=_SQLITE.value)
            if flags.FLAGS["test_fraction"].present:
                options.update(test_fraction=_TEST_FRACTION.value)
        options = {k: v for k, v in options.items() if v is not None}
        try:
            if beam_args is None:
                manifest = sources.prepare(_SOURCE.value, _ROOT.value, _OUT.value, **options)
            else:
                from sketch_tf.data.beam import prepare_beam

                manifest = prepare_beam(
                    _SOURCE.value, _ROOT.value, _OUT.value, beam_args, **options
                )
        except (ValueError, OSError) as e:
            cli.fail(str(e))
        parts = manifest if "num_records" not in manifest else {"": manifest}
        summary = {
            f"{split}/records" if split else "records": m.get("num_records")
            for split, m in parts.items()
        }
        summary["skipped"] = sum(m.get("skipped", {}).get("count", 0) for m in parts.values())
    print(json.dumps({"out": _OUT.value, **summary}))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
