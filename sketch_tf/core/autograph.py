"""sketch_tf's code is traced as it is written: AutoGraph does not transpile it.

Every function of this package that TensorFlow traces (tf.data map functions, train and
evaluation steps, serving signatures) is graph code already: tensor-dependent branches and
loops are written with `tf.cond` / `tf.while_loop` / vectorised ops, never as Python `if` or
`for` on a tensor. AutoGraph's conversion of such code changes nothing but costs single-threaded
Python time: 6-9 s of tracing per main-job family process (about 20 CPU-s over the main job,
issue 26), with bit-identical figures either way.

Importing this module adds a "do not convert" rule for the `sketch_tf` package to AutoGraph's
conversion rules (as TensorFlow's own rules exclude `tensorflow`, `keras` and `numpy`); user code
calling into sketch_tf keeps its own conversion. The modules through which traced code enters
(the record schema, the training loop, the serving inputs) import it. A
Python `if` on a tensor in this package therefore fails at trace time ("using a tf.Tensor as a
Python bool is not allowed") instead of being converted: write it with tf ops.

The rule list is TensorFlow's internal `autograph.core.config.CONVERSION_RULES`; if a release
moves it, nothing is changed (the code is then converted, as before: slower, same values).
"""

from __future__ import annotations

PACKAGE = "sketch_tf"


def skip_package_conversion(package: str = PACKAGE) -> bool:
    """Adds a do-not-convert rule for `package` (a dotted module prefix) in front of
    AutoGraph's rules, once; True when the rule is in place."""
    try:
        from tensorflow.python.autograph.core import config, config_lib
    except ImportError:
        return False
    rules = getattr(config, "CONVERSION_RULES", None)
    if not isinstance(rules, tuple) or not hasattr(config_lib, "DoNotConvert"):
        return False
    if not any(
        isinstance(r, config_lib.DoNotConvert) and getattr(r, "_prefix", None) == package
        for r in rules
    ):
        config.CONVERSION_RULES = (config_lib.DoNotConvert(package), *rules)
    return True


SKIPPED = skip_package_conversion()
