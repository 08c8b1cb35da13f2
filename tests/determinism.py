"""Shared check of `train.deterministic=True`: two runs of one config, bit-identical."""

import glob
import os

import numpy as np
import tensorflow as tf

from sketch_tf.train.run import load_run, train_run


def loss_scalars(workdir: str) -> dict[str, dict[int, float]]:
    """{stage-relative tag: {step: value}} of every `loss/*` scalar under `workdir` (all
    stages' `train/` summaries)."""
    out: dict[str, dict[int, float]] = {}
    pattern = os.path.join(workdir, "**", "train", "events.out.tfevents.*")
    for path in sorted(glob.glob(pattern, recursive=True)):
        stage = os.path.relpath(os.path.dirname(os.path.dirname(path)), workdir)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag.startswith("loss/"):
                    tag = f"{stage}:{value.tag}"
                    out.setdefault(tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return out


def assert_bit_identical_runs(config, base_dir) -> int:
    """Trains `config` (train.deterministic=True, a loss logged every step) twice in fresh
    folders under `base_dir`; asserts that every logged loss at every step and every final
    weight are bit-identical. Returns the number of (tag, step) losses compared."""
    config = config.copy_and_resolve_references()
    config.train.deterministic = True
    config.train.log_every = 1
    runs = []
    for name in ("a", "b"):
        workdir = os.path.join(str(base_dir), name)
        result = train_run(config, workdir, log=lambda *_: None)
        assert result.status == "completed"
        run = load_run(workdir)
        weights = [v.numpy() for m in run.models.values() for v in m.weights]
        runs.append((loss_scalars(workdir), weights))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert losses_a and losses_a == losses_b, (losses_a, losses_b)
    assert len(weights_a) == len(weights_b) > 0
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(a, b)
    compared = sum(len(v) for v in losses_a.values())
    print(f"deterministic: {compared} losses and {len(weights_a)} weight tensors bit-identical")
    return compared
