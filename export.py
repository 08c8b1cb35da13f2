"""Exports the latest checkpoint of a run as a versioned SavedModel for TF Serving.

  python export.py --workdir=runs/<run>                 # -> runs/<run>/export/<next>/
  python export.py --workdir=runs/<run> --export_dir=/models/<name> --version=3
  python export.py --workdir=runs/<run> --gallery=data/records/my_photos   # retrieve over it

Retrieval families (whose Task has a `retrieval()`) store their gallery in the servable
for their `retrieve` signature (= serving_default): `--gallery=RECORDS` (a labelled-image
records folder of prepare_data.py, every class of it) is embedded by the model at export
time; the default `test` takes the run's test records of the classes it was evaluated on
(`data.classes`, when the config restricts them); `none` exports the embedding signatures
only.

Layout: <export_dir>/<version>/saved_model.pb, variables/ and
assets.extra/tf_serving_warmup_requests, written to a temporary folder, checked by reloading,
then renamed into place; the version defaults to the next free integer (1 + the largest
version folder). <export_dir>/models.config and batching_parameters.txt are the server's
--model_config_file and --batching_parameters_file (README, "Export and serving").
"""

import os

from absl import app, flags

from sketch_tf import cli

_CONFIG = cli.define_config_flag()
_WORKDIR = cli.define_workdir_flag()
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Model base folder (default <workdir>/export)."
)
_VERSION = flags.DEFINE_integer(
    "version", None, "Version folder name (default: the next free integer in --export_dir)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing version folder.")
_GALLERY = flags.DEFINE_string(
    "gallery",
    "test",
    "Retrieval families: records folder embedded as the `retrieve` signature's gallery; "
    "'test' = the run's test records (of its data.classes, when set), 'none' = no gallery "
    "(embedding signatures only).",
)
_MODEL_NAME = flags.DEFINE_string(
    "model_name", None, "Model name in models.config and the warmup requests (default: task)."
)


def main(argv):
    cli.check_args(argv, workdir=_WORKDIR.value)
    if _VERSION.value is not None and _VERSION.value < 0:
        cli.fail(f"--version must be >= 0, got {_VERSION.value}")
    run = cli.load_run_or_fail(_CONFIG.value, _WORKDIR.value)

    from sketch_tf.export.serving import export_saved_model, next_version, run_gallery

    base = _EXPORT_DIR.value or os.path.join(_WORKDIR.value, "export")
    version = _VERSION.value if _VERSION.value is not None else next_version(base)
    if os.path.exists(os.path.join(base, str(version))) and not _OVERWRITE.value:
        cli.fail(f"{os.path.join(base, str(version))} already exists (--version or --overwrite)")
    try:
        gallery = run_gallery(run, _GALLERY.value)
    except (FileNotFoundError, ValueError) as err:
        cli.fail(f"--gallery={_GALLERY.value}: {err}")
    if gallery is not None:
        classes = gallery.manifest["classes"]
        of = f" (classes {', '.join(classes)})" if classes else ""
        print(f"gallery: {gallery.size} images of {gallery.manifest['records']}{of}")
    import tensorflow as tf

    try:
        path = export_saved_model(
            run.task,
            run.models,
            base,
            version,
            overwrite=_OVERWRITE.value,
            model_name=_MODEL_NAME.value,
            gallery=gallery,
            model_manifest=run.manifest(),
        )
    except (OSError, tf.errors.OpError) as err:
        detail = getattr(err, "message", None) or str(err)
        cli.fail(
            f"could not write version {version} in {base} ({detail.strip()}; disk full?): "
            "nothing of it was left, the other versions are untouched"
        )
    print(f"exported {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
