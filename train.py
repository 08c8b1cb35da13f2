"""Trains one model family from a config file.

  python train.py --config=configs/<family>.py:synthetic --workdir=runs/<family>
  python train.py --config=configs/<family>.py:<variant> --config.train.batch_size=64 \
      --workdir=runs/<run>

Rerunning with the same --workdir resumes from its latest checkpoint. A multi-stage config
(`config.stage_order`) trains its stages in order into <workdir>/<stage>/, each starting from
the one before; a rerun skips finished stages and resumes the one it was in. SIGTERM / Ctrl-C
save a checkpoint, print the command that resumes, and exit with 128 + the signal number
(143 / 130). TensorBoard: `tensorboard --logdir=<workdir>`.
"""

import sys

from absl import app, logging

from sketch_tf import cli

_CONFIG = cli.define_config_flag(trained_run=False)
_WORKDIR = cli.define_workdir_flag("Run folder: checkpoints, summaries, config.json.")
_STRATEGY = cli.define_strategy_flag()


def main(argv):
    cli.check_args(argv, workdir=_WORKDIR.value)
    if _CONFIG.value is None:
        cli.fail("--config is required, e.g. --config=configs/<family>.py:synthetic")
    config = cli.validated_config(_CONFIG.value, None)

    from sketch_tf.train import loop
    from sketch_tf.train import strategy as strategy_lib
    from sketch_tf.train.run import train_run

    strategy = strategy_lib.build_strategy(_STRATEGY.value)
    logging.info(
        "strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync
    )
    try:
        result = train_run(config, _WORKDIR.value, strategy, log=logging.info)
    except (loop.NonFiniteLossError, loop.WorkdirError, loop.InputError) as e:
        logging.error("%s", e)
        sys.exit(1)
    if result.status == "interrupted":
        cli.exit_interrupted(result, f"training of {_WORKDIR.value}")
    print(f"{result.status} at step {result.step}; checkpoint {result.checkpoint}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
