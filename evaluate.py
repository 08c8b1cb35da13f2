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
    if _ABLATIONS.value:
        known = sorted((run.config.get("ablations") or {}).keys())
        unknown = sorted(set(_ABLATIONS.value) - set(known) - {"all"})
        if unknown:
            cli.fail(f"--ablations: unknown {unknown}; this config defines {known}")

    from sketch_tf.eval.report import format_result
    from sketch_tf.train import loop
    from sketch_tf.train.run import run_ablations

    result = run.task.evaluate(run.models, run.workdir)
    result.setdefault("checkpoint", run.checkpoint)
    if _ABLATIONS.value:
        top = (
            _CONFIG.value
            if _CONFIG.value is not None
            else cli.validated_config(None, _WORKDIR.value)
        )
        run_ablations(top, _WORKDIR.value, result, _ABLATIONS.value, log=logging.info)
    json_path = loop.write_eval_results(run.workdir, run.step, result)
    print(format_result(result, title=f"{run.config.task} @ step {run.step} ({run.checkpoint})"))
    print(f"metrics: {json_path}")
    if _OUTPUT.value:
        with open(json_path) as src, open(_OUTPUT.value, "w") as dst:
            json.dump(json.load(src), dst, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
