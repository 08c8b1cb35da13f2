"""Evaluates the latest checkpoint of a run and writes the metrics.

  python evaluate.py --workdir=runs/zs_sbir            # uses runs/zs_sbir/config.json
  python evaluate.py --config=configs/zs_sbir.py:synthetic --workdir=runs/zs_sbir

Metrics go to <workdir>/eval (TensorBoard and metrics_<step>.json) and are printed as a table.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from sketch_tf import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file; default: <workdir>/config.json of the trained run.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder with ckpt/ (required).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the metrics JSON here.")
_ABLATE_DOMAIN = flags.DEFINE_bool(
    "ablate_domain",
    False,
    "zs_sbir only: also train (or resume) the same run with loss.domain_weight=0 in "
    "<workdir>/ablate_domain, evaluate it and print it next to the model and random ranking.",
)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        cli.fail("--workdir is required")
    config = cli.validated_config(_CONFIG.value, _WORKDIR.value)
    if _ABLATE_DOMAIN.value and config.task != "zs_sbir":
        cli.fail(f"--ablate_domain applies to the zs_sbir task only, not {config.task!r}")
    ckpt_dir = os.path.join(_WORKDIR.value, "ckpt")

    import tensorflow as tf

    from sketch_tf.eval.report import format_result
    from sketch_tf.train import loop
    from sketch_tf.train.tasks import get_task_class

    if tf.train.latest_checkpoint(ckpt_dir) is None:
        cli.fail(f"no checkpoint in {ckpt_dir}: train first (python train.py ... --workdir=...)")
    task = get_task_class(config.task)(config)
    state = loop.build_state(task, config)
    path = loop.restore_latest(state, ckpt_dir, for_training=False)
    step = int(state.step.numpy())
    result = task.evaluate(state.models, _WORKDIR.value)
    result.setdefault("checkpoint", path)
    if _ABLATE_DOMAIN.value:
        from absl import logging

        from sketch_tf.train.zs_sbir_task import run_domain_ablation

        run_domain_ablation(config, _WORKDIR.value, result, log=logging.info)
    json_path = loop.write_eval_results(_WORKDIR.value, step, result)
    print(format_result(result, title=f"{config.task} @ step {step} ({path})"))
    print(f"metrics: {json_path}")
    if _OUTPUT.value:
        with open(json_path) as src, open(_OUTPUT.value, "w") as dst:
            json.dump(json.load(src), dst, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
