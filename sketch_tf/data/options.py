"""The tf.data options of the project's datasets: `dataset_options` for every dataset the
input layer builds, `one_pass` for a pass that is read once and dropped. Below `pipeline` and
`cache`, which both use them (re-exported by `pipeline`, the input layer)."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["dataset_options", "one_pass"]


def dataset_options() -> tf.data.Options:
    """The options of every dataset built here: deterministic order, and tf.data's autotuning
    off (parallel maps run at the CPU count, prefetch buffers still grow on demand).

    With autotuning on, TF 2.21 holds the teardown of an iterator that ran for a while for
    tens of seconds with no CPU used: the zooms training input read for 47 s, then `del
    iterator` took 34 s (0.2 s without autotuning, at the same 9.5 ms and 18 ms of CPU per
    batch), and the main job's zooms process sat idle for 27-30 s at the end of its training.
    """
    opts = tf.data.Options()
    opts.deterministic = True
    opts.autotune.enabled = False
    return opts


def one_pass(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` for one pass whose iterator is then dropped (evaluation, feature caches,
    galleries): tf.data's autotuning off, parallel maps at the CPU count, also where `ds` was
    not built with `dataset_options` (a plain `TFRecordDataset` chain). With autotuning on,
    TF 2.21 holds the teardown of such an iterator for up to tens of seconds with no CPU used
    (an autotuned map read over ~20 s, then `del iterator`: 18.7 s, 0 s without autotuning;
    17-20 s per feature-cache pass of the main job; see `dataset_options`)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
