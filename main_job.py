"""The main job on the embedded default data: for each model family, render the synthetic
dataset (if absent), train, evaluate on held-out shapes / unseen categories, export a
SavedModel, and print one results table at the end.

  .venv/bin/python main_job.py                          # all families, the documented CPU budget
  .venv/bin/python main_job.py --families=<family>      # one family (sketch_tf/families/)
  .venv/bin/python main_job.py --smoke                  # a minute-long end-to-end check

Everything goes under --workdir (default runs/main): <workdir>/<family>/ is an ordinary run
folder (ckpt/, train/, eval/, export/, config.json), usable with train.py, evaluate.py,
export.py and TensorBoard. A rerun resumes training where it stopped and re-evaluates.
SIGTERM / Ctrl-C during a family's training save its checkpoint and stop the whole job (no
evaluation or export of the half-trained model, no later family, no results.json): it says
where it stopped and the command that resumes, and exits with 128 + the signal number.
"""

import json
import os
import time

from absl import app, flags, logging

from sketch_tf import cli
from sketch_tf.core.files import write_atomic
from sketch_tf.paths import PROJECT_ROOT
from sketch_tf.train.config_sections import STRATEGY_NAMES

_WORKDIR = flags.DEFINE_string("workdir", "runs/main", "Root folder of the main job's runs.")
_FAMILIES = flags.DEFINE_list(
    "families", [], "Families to run (default: every family of sketch_tf.families)."
)
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Tiny data and a few steps: checks the whole flow, not the model."
)
# One machine: every strategy but multi_worker.
_STRATEGY = cli.define_strategy_flag([n for n in STRATEGY_NAMES if n != "multi_worker"])


def run_family(family: str, workdir: str, smoke: bool, strategy) -> dict:
    """prepare -> train -> evaluate -> export for one family; returns its evaluation result.

    The family's config is `configs/<family>.py:synthetic` (`:synthetic_smoke` with --smoke);
    its records are rendered from the synthetic world when absent."""
    from sketch_tf.data.synthetic.prepare import default_workers, prepare_synthetic
    from sketch_tf.export.serving import export_run
    from sketch_tf.train.config import ConfigError, load_project_config, validate_config
    from sketch_tf.train.run import load_run, train_run

    config = load_project_config(family, "synthetic_smoke" if smoke else "synthetic")
    run_dir = os.path.join(workdir, family)
    if smoke:
        # Keep smoke data apart from the real run's data.
        config.data.root = os.path.join(workdir, "records", f"synthetic_{family}")
    try:
        validate_config(config)
    except ConfigError as e:
        cli.fail(f"configs/{family}.py: {e}")
    timings = {}
    root = config.data.root
    if not os.path.isabs(root):
        root = os.path.join(PROJECT_ROOT, root)
        config.data.root = root
    t0 = time.perf_counter()
    if not os.path.isdir(os.path.join(root, "train")):
        logging.info("[%s] rendering the synthetic dataset into %s", family, root)
        options = config.data.synthetic.to_dict()
        # The synthetic world's dataset kind, when it is not named like the family.
        task = options.pop("task", config.task)
        prepare_synthetic(task, root, workers=default_workers(), **options)
    timings["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = train_run(config, run_dir, strategy, log=logging.info)
    timings["train_s"] = time.perf_counter() - t0
    if result.status != "completed":
        cli.exit_interrupted(
            result,
            f"the main job's training of family {family!r} ({run_dir})",
            note="Not evaluated or exported; the later families did not run.",
        )

    t0 = time.perf_counter()
    run = load_run(run_dir, config)
    evaluation, _ = run.evaluate_and_write()
    timings["evaluate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    export_path = export_run(run, os.path.join(run_dir, "export"), result.step, overwrite=True)
    timings["export_s"] = time.perf_counter() - t0
    evaluation["export"] = export_path
    evaluation["timings"] = timings
    evaluation["step"] = result.step
    evaluation["task"] = config.task
    return evaluation


def headline_rows(results: dict) -> list[list]:
    """One row per (family, headline metric, baseline) for the final table, from each task's
    declared `headlines`; absent keys are skipped."""
    from sketch_tf.families import get_task_class

    rows = []
    for family, result in results.items():
        scalars = result.get("scalars", {})
        for headline in get_task_class(result.get("task", family)).headlines:
            if headline.key not in scalars:
                continue
            for name, base_key in headline.baselines or (("n/a", ""),):
                base = scalars.get(base_key)
                rows.append(
                    [
                        family,
                        headline.label,
                        float(scalars[headline.key]),
                        name,
                        float(base) if base is not None else "n/a",
                    ]
                )
    return rows


def main(argv):
    cli.check_args(argv)
    from sketch_tf.families import family_names

    families = _FAMILIES.value or family_names()
    unknown = sorted(set(families) - set(family_names()))
    if unknown:
        cli.fail(f"--families: unknown {unknown}; choose from {family_names()}")

    from sketch_tf.eval.report import format_result, format_table
    from sketch_tf.train import strategy as strategy_lib

    strategy = strategy_lib.build_strategy(_STRATEGY.value)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    results = {}
    for family in families:
        results[family] = run_family(family, workdir, _SMOKE.value, strategy)

    print("\n" + "=" * 78)
    print(
        "sketch_tf main job"
        + (" (smoke run: tiny data, numbers mean nothing)" if _SMOKE.value else "")
    )
    for family, result in results.items():
        print()
        print(format_result(result, title=f"## {family} (step {result['step']})"))
        print(f"export: {result['export']}")
    print()
    print("## results on held-out data (ours vs non-learned baselines)")
    print(
        format_table(
            ["family", "metric", "ours", "baseline", "baseline value"], headline_rows(results)
        )
    )
    rows = []
    for family, result in results.items():
        t = result["timings"]
        rows.append(
            [
                family,
                result["step"],
                *(round(t[k], 1) for k in ("prepare_s", "train_s", "evaluate_s", "export_s")),
            ]
        )
    print()
    print(
        format_table(
            ["family", "steps", "prepare s", "train s", "evaluate s", "export s"], rows, ".1f"
        )
    )
    summary_path = os.path.join(workdir, "results.json")
    summary = {k: {kk: vv for kk, vv in v.items() if kk != "images"} for k, v in results.items()}
    write_atomic(summary_path, json.dumps(summary, indent=2, default=str))
    print(f"\nresults: {summary_path}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
