"""Shared check of distributed training: a config trained under a multi-replica strategy logs
the losses of one replica on the same global batch."""

import os

import numpy as np

from sketch_tf.train.run import load_run, train_run
from tests.determinism import loss_scalars

#: Tolerance of the comparison. The replicas sum their shares of each loss and gradient in
#: another order than one replica sums the whole batch (and synchronised BatchNorm computes
#: the variance as E[x^2] - E[x]^2), so values agree to float32 rounding, amplified a little
#: by every optimizer step taken on slightly different gradients.
RTOL, ATOL = 1e-4, 1e-5
#: Final weights, as a fraction of the largest distance training can move a weight (Adam
#: moves each weight by up to about the learning rate per step whatever its gradient's size,
#: so a weight whose gradient is near zero, where a rounding difference rescales m / sqrt(v),
#: may end a fraction of that apart; every other weight agrees to float32 rounding).
WEIGHT_ATOL_FRACTION = 0.25


def assert_same_losses_as_one_replica(config, base_dir, strategy) -> dict:
    """Trains `config` (a loss logged every step) with the default strategy and with
    `strategy` in fresh folders under `base_dir`, then `assert_same_runs`.

    Args:
      config: a run config (one stage or a multi-stage recipe).
      base_dir: folder for the two runs.
      strategy: the multi-replica strategy (e.g. MirroredStrategy over 2 logical CPUs).

    Returns:
      `assert_same_runs`' figures.
    """
    config = config.copy_and_resolve_references()
    config.train.log_every = 1
    dirs = {}
    for name, strat in (("one_replica", None), ("distributed", strategy)):
        dirs[name] = os.path.join(str(base_dir), name)
        result = train_run(config, dirs[name], strat, log=lambda *_: None)
        assert result.status == "completed", name
    return assert_same_runs(
        config, dirs["one_replica"], dirs["distributed"], strategy.num_replicas_in_sync
    )


def assert_same_runs(config, one_replica_dir: str, distributed_dir: str, replicas: int) -> dict:
    """Asserts that every loss term logged at every step and every final weight of the run in
    `distributed_dir` agree with the one-replica run of the same `config` in
    `one_replica_dir` (losses within RTOL / ATOL; weights see WEIGHT_ATOL_FRACTION).

    Returns:
      {"losses": number of (term, step) values compared, "max_rel_diff": largest relative
      difference of a loss, "max_weight_diff": largest absolute weight difference,
      "replicas": `replicas`}; printed as well.
    """
    ref, got = loss_scalars(one_replica_dir), loss_scalars(distributed_dir)
    assert ref and sorted(ref) == sorted(got), (sorted(ref), sorted(got))
    worst, compared = 0.0, 0
    for tag in ref:
        assert sorted(ref[tag]) == sorted(got[tag]), tag
        for step, value in ref[tag].items():
            np.testing.assert_allclose(got[tag][step], value, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{tag} at step {step}")  # fmt: skip
            worst = max(worst, abs(got[tag][step] - value) / max(abs(value), 1e-12))
            compared += 1
    weights = [
        [v.numpy() for m in load_run(d).models.values() for v in m.weights]
        for d in (one_replica_dir, distributed_dir)
    ]
    assert len(weights[0]) == len(weights[1]) > 0
    steps = sum(len(v) for tag, v in ref.items() if tag.endswith("loss/total"))
    weight_atol = WEIGHT_ATOL_FRACTION * float(config.train.learning_rate) * steps
    weight_diff = 0.0
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=weight_atol)
        weight_diff = max(weight_diff, float(np.max(np.abs(a - b), initial=0.0)))
    figures = {
        "losses": compared,
        "max_rel_diff": worst,
        "max_weight_diff": weight_diff,
        "replicas": replicas,
    }
    tolerance = f"losses rtol {RTOL} atol {ATOL}, weights atol {weight_atol:.2g}"
    print(f"distributed parity: {figures} ({tolerance})")
    return figures
