"""Evaluates the latest checkpoint of a run and writes the metrics.

  python evaluate.py --workdir=runs/<run>            # uses runs/<run>/config.json
  python evaluate.py --config=configs/<family>.py:<variant> --workdir=runs/<run>
  python evaluate.py --workdir=runs/<run> --ablations=all   # + the config's ablations

Metrics go to <workdir>/eval (TensorBoard and metrics_<step>.json) and are printed as a table.
`--ablations` trains (or resumes) each named ablation of `config.ablations` (name ->
overrides) in <workdir>/ablations/<name>, evaluates it the same way and adds a comparison
table (the model, each ablation, the baselines).
"""

import json

from absl import app, flags, logging

from sketch_tf import cli

_CONFIG = cli.define_config_flag()
_WORKDIR = cli.define_workdir_flag()
_OUTPUT = flags.DEFINE_string("output", None, "Also write the metrics JSON here.")
_ABLATIONS = flags.DEFINE_list(
    "ablations",
    [],
    "Names from config.ablations to train (or resume) and compare, or 'all'.",
)


def main(argv):
    cli.check_args(argv, workdir=_WORKDIR.value)
    run = cli.load_run_or_fail(_CONFIG.value, _WORKDIR.value)

    from sketch_tf.eval.report import format_result
    from sketch_tf.train.run import run_ablations, select_ablations

    ablations, top = [], None
    if _ABLATIONS.value:
        # The ablations are the whole config's (the stages of a multi-stage run have none).
        top = (
            _CONFIG.value
            if _CONFIG.value is not None
            else cli.validated_config(None, _WORKDIR.value)
        )
        try:
            ablations = select_ablations(top, _ABLATIONS.value)
        except ValueError as e:
            cli.fail(str(e))

    def add_checkpoint_and_ablations(result):
        result.setdefault("checkpoint", run.checkpoint)
        if ablations:
            run_ablations(top, _WORKDIR.value, result, ablations, log=logging.info)

    result, json_path = run.evaluate_and_write(before_write=add_checkpoint_and_ablations)
    print(format_result(result, title=f"{run.config.task} @ step {run.step} ({run.checkpoint})"))
    print(f"metrics: {json_path}")
    if _OUTPUT.value:
        with open(json_path) as src, open(_OUTPUT.value, "w") as dst:
            json.dump(json.load(src), dst, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
