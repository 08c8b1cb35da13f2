"""Helpers shared by the absl command-line scripts (train.py, evaluate.py, export.py, ...).

Flags are read in the scripts' `main()` only; everything below takes plain values.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
from absl import flags

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


def fail(message: str) -> None:
    """Prints `message` and exits with status 2 (bad flags/config: nothing was written)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_CONFIG)


def validated_config(
    config: ml_collections.ConfigDict | None, workdir: str | None
) -> ml_collections.ConfigDict:
    """The config to use: `--config` when given, else `<workdir>/config.json` saved by
    training; validated before anything heavy happens. Exits with status 2 when invalid."""
    from sketch_tf.train.config import ConfigError, validate_config

    if config is None:
        if not workdir:
            fail("give --config, or --workdir of a trained run (its config.json is used)")
        path = os.path.join(workdir, "config.json")
        if not os.path.isfile(path):
            fail(f"no --config given and {path} does not exist (is --workdir a trained run?)")
        try:
            with open(path) as f:
                config = ml_collections.ConfigDict(json.load(f))
        except (OSError, ValueError) as e:
            fail(f"cannot read {path}: {e}")
    try:
        validate_config(config)
    except ConfigError as e:
        fail(str(e))
    return config
