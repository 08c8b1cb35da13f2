"""Helpers shared by the absl command-line scripts (train.py, evaluate.py, export.py, ...).

The common flags (`--config`, `--workdir`, `--strategy`) are defined here once; scripts call
the `define_*` functions at import time and read the flags in their `main()` only; everything
else below takes plain values.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from sketch_tf.train.config_sections import STRATEGY_NAMES

#: Exit status for unusable flags or config values (nothing has been written when it is used).
EXIT_BAD_CONFIG = 2


def parse_flags_or_exit(argv: list[str]) -> list[str]:
    """absl `flags_parser` for `app.run` that reports flag and config-override errors (a
    misspelt `--config.train.batch_sise`, a value of the wrong type) with exit code 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        # ml_collections raises KeyError/AttributeError ("Did you mean ...") for unknown
        # config keys and TypeError/ValueError for values of the wrong type.
        message = e.args[0] if isinstance(e, (KeyError, AttributeError)) and e.args else e
        print(f"error: bad flag or config override: {message}", file=sys.stderr)
        print(f"Run `{os.path.basename(argv[0])} --helpfull` for the flags.", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)


def define_config_flag(trained_run: bool = True):
    """`--config=configs/<family>.py:<variant>` (locked: a misspelt override fails). With
    `trained_run`, it defaults to `<workdir>/config.json` of the trained run."""
    help_text = (
        "Config file; default: <workdir>/config.json of the trained run."
        if trained_run
        else "Config file, e.g. configs/<family>.py:synthetic."
    )
    return config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def define_workdir_flag(help_text: str = "Run folder of a trained run (required)."):
    return flags.DEFINE_string("workdir", None, help_text)


def define_strategy_flag(names=STRATEGY_NAMES):
    return flags.DEFINE_enum(
        "strategy",
        "auto",
        list(names),
        "auto: MirroredStrategy over all GPUs when there is more than one, else default. "
        "mirrored: all GPUs (or the logical CPUs). multi_worker reads TF_CONFIG.",
    )


def check_args(argv: list[str], **required) -> None:
    """Fails (exit 2) on positional arguments or on a required flag left empty
    (`check_args(argv, workdir=_WORKDIR.value)`)."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]}")
    for name, value in required.items():
        if value is None or value == "":
            fail(f"--{name} is required")


def load_run_or_fail(config: ml_collections.ConfigDict | None, workdir: str):
    """`sketch_tf.train.run.load_run`, turning a missing run, a bad config or a checkpoint
    that does not fit into a message and exit status 2."""
    from sketch_tf.train.config import ConfigError
    from sketch_tf.train.run import load_run

    try:
        return load_run(workdir, config)
    except (FileNotFoundError, ConfigError, ValueError) as e:
        fail(str(e))


def fail(message: str) -> None:
    """Prints `message` and exits with status 2 (bad flags/config: nothing was written)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_CONFIG)


def interrupted_line(result, what: str, note: str = "") -> str:
    """The line saying what a signal stopped and where (`result`: anything with the
    `loop.TrainResult` fields `stop_signal`, `step` and `checkpoint`)."""
    sig = result.stop_signal
    name = signal.Signals(sig).name if sig else "stop request"
    return (
        f"interrupted by {name}: {what} stopped at step {result.step} "
        f"(checkpoint {result.checkpoint}).{' ' + note if note else ''}"
    )


def exit_interrupted(result, what: str, note: str = "") -> None:
    """Ends a script whose training was stopped by a signal (`result`: the `loop.TrainResult`
    with status `interrupted`): says on stderr what stopped, where, and the command that
    resumes it (this script's own command line: a rerun resumes from the checkpoint), and
    exits with 128 + the signal number (130 Ctrl-C, 143 SIGTERM), the status of a process
    the signal killed, so that a caller or scheduler sees it did not finish. `note` (what
    was skipped) follows the first line."""
    exit_after_signal(result.stop_signal, interrupted_line(result, what, note))


def exit_after_signal(sig: int | None, message: str) -> None:
    """Prints `message` and the command that resumes (this script's own command line) on
    stderr, and exits with 128 + `sig` (1 when None)."""
    command = shlex.join([sys.executable, *sys.argv])
    print(f"{message}\nResume with:\n  {command}", file=sys.stderr, flush=True)
    sys.exit(128 + sig if sig else 1)


def validated_config(
    config: ml_collections.ConfigDict | None, workdir: str | None
) -> ml_collections.ConfigDict:
    """The config to use: `--config` when given, else `<workdir>/config.json` saved by
    training; validated before anything heavy happens. Exits with status 2 when invalid."""
    from sketch_tf.train.config import ConfigError, validate_config

    if config is None:
        if not workdir:
            fail("give --config, or --workdir of a trained run (its config.json is used)")
        from sketch_tf.train.run import read_config

        try:
            config = read_config(workdir)
        except FileNotFoundError as e:
            fail(f"no --config given and {e}")
        except ValueError as e:
            fail(str(e))
    try:
        validate_config(config)
    except ConfigError as e:
        fail(str(e))
    return config
