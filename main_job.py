"""The main job on the embedded default data: for each model family, render the synthetic
dataset (if absent), train, evaluate on held-out shapes / unseen categories, export a
SavedModel, and print one results table at the end.

  .venv/bin/python main_job.py                          # all families, the documented CPU budget
  .venv/bin/python main_job.py --families=zs_sbir       # one family
  .venv/bin/python main_job.py --smoke                  # a minute-long end-to-end check

Everything goes under --workdir (default runs/main): <workdir>/<family>/ is an ordinary run
folder (ckpt/, train/, eval/, export/, config.json), usable with train.py, evaluate.py,
export.py and TensorBoard. A rerun resumes training where it stopped and re-evaluates.
"""

import json
import os
import time

from absl import app, flags, logging

from sketch_tf import cli
from sketch_tf.paths import PROJECT_ROOT

FAMILIES = ("zooms", "zs_sbir")

_WORKDIR = flags.DEFINE_string("workdir", "runs/main", "Root folder of the main job's runs.")
_FAMILIES = flags.DEFINE_list("families", list(FAMILIES), f"Families to run, from {FAMILIES}.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Tiny data and a few steps: checks the whole flow, not the model."
)
_STRATEGY = flags.DEFINE_enum(
    "strategy", "auto", ["auto", "default", "mirrored"], "Distribution strategy."
)


def run_family(family: str, workdir: str, smoke: bool, strategy) -> dict:
    """prepare -> train -> evaluate -> export for one family; returns its evaluation result."""
    from sketch_tf.data.synthetic.prepare import prepare_synthetic
    from sketch_tf.export.serving import export_saved_model
    from sketch_tf.train import loop
    from sketch_tf.train.config import ConfigError, load_project_config, validate_config
    from sketch_tf.train.tasks import get_task_class

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
        prepare_synthetic(family, root, **config.data.synthetic.to_dict())
    timings["prepare_s"] = time.perf_counter() - t0

    task = get_task_class(config.task)(config)
    t0 = time.perf_counter()
    result = loop.train(task, config, run_dir, strategy, log=logging.info)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    state = loop.build_state(task, config)
    loop.restore_latest(state, os.path.join(run_dir, loop.CHECKPOINT_SUBDIR), for_training=False)
    evaluation = task.evaluate(state.models, run_dir)
    loop.write_eval_results(run_dir, result.step, evaluation)
    timings["evaluate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    export_path = export_saved_model(
        task, state.models, os.path.join(run_dir, "export"), result.step, overwrite=True
    )
    timings["export_s"] = time.perf_counter() - t0
    evaluation["export"] = export_path
    evaluation["timings"] = timings
    evaluation["step"] = result.step
    return evaluation


#: family -> (metric shown, its scalar key, [(baseline name, scalar key), ...]).
HEADLINES = {
    "zooms": [
        (f"PCK@5% {split}", f"{split}/ours/pck@5%",
         [("raw patch", f"{split}/raw_patch/pck@5%"),
          ("shape context", f"{split}/shape_context/pck@5%")])
        for split in ("seen", "unseen")
    ],
    "zs_sbir": [
        ("mAP@all unseen", "map_all", [("random ranking", "random_map_all")]),
        ("P@100 unseen", "p_100", [("random ranking", "random_p_100")]),
    ],
}  # fmt: skip


def headline_rows(results: dict) -> list[list]:
    """One row per (family, metric, baseline) for the final table; absent keys are skipped."""
    rows = []
    for family, result in results.items():
        scalars = result.get("scalars", {})
        for metric, key, baselines in HEADLINES.get(family, []):
            if key not in scalars:
                continue
            for name, base_key in baselines:
                base = scalars.get(base_key)
                rows.append(
                    [
                        family,
                        metric,
                        float(scalars[key]),
                        name,
                        float(base) if base is not None else "n/a",
                    ]
                )
    return rows


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_FAMILIES.value) - set(FAMILIES))
    if unknown:
        cli.fail(f"--families: unknown {unknown}; choose from {FAMILIES}")

    from sketch_tf.eval.report import format_result, format_table
    from sketch_tf.train import strategy as strategy_lib

    strategy = strategy_lib.build_strategy(_STRATEGY.value)
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    results = {}
    for family in _FAMILIES.value:
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
    with open(summary_path + ".tmp", "w") as f:
        json.dump(
            {k: {kk: vv for kk, vv in v.items() if kk != "images"} for k, v in results.items()},
            f,
            indent=2,
            default=str,
        )
    os.replace(summary_path + ".tmp", summary_path)
    print(f"\nresults: {summary_path}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
