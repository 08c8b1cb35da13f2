"""Trains one model family from a config file.

  python train.py --config=configs/zs_sbir.py:synthetic --workdir=runs/zs_sbir
  python train.py --config=configs/zs_sbir.py:pacs --config.train.batch_size=64 --workdir=runs/pacs

Rerunning with the same --workdir resumes from its latest checkpoint. SIGTERM / Ctrl-C save a
checkpoint and exit cleanly. TensorBoard: `tensorboard --logdir=<workdir>`.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sketch_tf import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/zs_sbir.py:synthetic.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, summaries, config.json.")
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "auto",
    ["auto", "default", "mirrored", "multi_worker"],
    "auto: MirroredStrategy over all GPUs when there is more than one, else default. "
    "multi_worker reads TF_CONFIG.",
)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        cli.fail("--workdir is required")
    if _CONFIG.value is None:
        cli.fail("--config is required, e.g. --config=configs/zs_sbir.py:synthetic")
    config = cli.validated_config(_CONFIG.value, None)

    from sketch_tf.train import loop
    from sketch_tf.train import strategy as strategy_lib
    from sketch_tf.train.tasks import get_task_class

    strategy = strategy_lib.build_strategy(_STRATEGY.value)
    logging.info(
        "strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync
    )
    task = get_task_class(config.task)(config)
    try:
        result = loop.train(task, config, _WORKDIR.value, strategy, log=logging.info)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        sys.exit(1)
    print(f"{result.status} at step {result.step}; checkpoint {result.checkpoint}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
