"""The tf.data options of the project's datasets: `dataset_options` for every dataset the
input layer builds, `one_pass` for a pass that is read once and dropped. Below `pipeline` and
`cache`, which both use them (re-exported by `pipeline`, the input layer)."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["dataset_options", "one_pass"]


def dataset_options() -> tf.data.Options:
    """The options of every dataset built here: deterministic order, autotuned parallelism
    (tf.data's default, left unset so that `one_pass` can turn it off without a warning)."""
    opts = tf.data.Options()
    opts.deterministic = True
    return opts


def one_pass(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` for one pass whose iterator is then dropped (evaluation, feature caches,
    galleries): tf.data's autotuning off, parallel maps at the CPU count. With autotuning on,
    TF 2.21 intermittently holds the teardown of such an iterator for up to ~20 s with no
    CPU used (measured: an autotuned map read over ~20 s, then `del iterator`: 18.7 s, 0 s
    without autotuning; 17-20 s per feature-cache pass of the main job). Training input
    keeps autotuning: its iterator is not dropped after a pass."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
