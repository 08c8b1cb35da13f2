"""Builds the `tf.distribute` strategy named by the `--strategy` flag."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from sketch_tf.train.config_sections import STRATEGY_NAMES


def build_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns a strategy.

    Args:
      name: `auto` (MirroredStrategy when more than one GPU is visible, else the default
        strategy), `default`, `mirrored` (all GPUs, or all logical CPUs when there is no GPU:
        that is how tests run two replicas on one CPU), or `multi_worker` (reads `TF_CONFIG`).
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"--strategy must be one of {STRATEGY_NAMES}, got {name!r}")
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints and summaries (always true off multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs
    )


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes (hosts) that take part in each step: the chief and workers of the
    `TF_CONFIG` cluster under MultiWorkerMirroredStrategy, else 1."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))


def worker_id(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "chief"
    return f"{resolver.task_type}_{resolver.task_id}"
