"""Exports the latest checkpoint of a run as a versioned SavedModel for TF Serving.

  python export.py --workdir=runs/zs_sbir                 # -> runs/zs_sbir/export/<step>/
  python export.py --workdir=runs/zs_sbir --export_dir=/models/zs_sbir --version=3

Layout: <export_dir>/<version>/saved_model.pb, variables/ and
assets.extra/tf_serving_warmup_requests,
written to a temporary folder, checked by reloading, then renamed into place.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from sketch_tf import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file; default: <workdir>/config.json of the trained run.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder with ckpt/ (required).")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Model base folder (default <workdir>/export)."
)
_VERSION = flags.DEFINE_integer(
    "version", None, "Version folder name (default: the checkpoint step)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing version folder.")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        cli.fail("--workdir is required")
    if _VERSION.value is not None and _VERSION.value < 0:
        cli.fail(f"--version must be >= 0, got {_VERSION.value}")
    config = cli.validated_config(_CONFIG.value, _WORKDIR.value)
    ckpt_dir = os.path.join(_WORKDIR.value, "ckpt")

    import tensorflow as tf

    from sketch_tf.export.serving import export_saved_model
    from sketch_tf.train import loop
    from sketch_tf.train.tasks import get_task_class

    if tf.train.latest_checkpoint(ckpt_dir) is None:
        cli.fail(f"no checkpoint in {ckpt_dir}: train first")
    task = get_task_class(config.task)(config)
    state = loop.build_state(task, config)
    loop.restore_latest(state, ckpt_dir, for_training=False)
    version = _VERSION.value if _VERSION.value is not None else int(state.step.numpy())
    base = _EXPORT_DIR.value or os.path.join(_WORKDIR.value, "export")
    path = export_saved_model(task, state.models, base, version, overwrite=_OVERWRITE.value)
    print(f"exported {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
