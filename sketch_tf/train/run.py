"""Run folders: load one (config, task, models, checkpoint), train one (one stage or a
multi-stage recipe), and run a config's ablations. Generic: no family is named here.

A run folder is what `train.py --workdir=DIR` writes:

    DIR/config.json          the resolved config (read back by evaluate/export/match)
    DIR/ckpt/                checkpoints (`ckpt-<step>`)
    DIR/train/, DIR/eval/    TensorBoard summaries; eval/ also holds metrics_<step>.json

A multi-stage config (`config.stage_order`, `config.stages`) writes `DIR/config.json` (the
whole recipe) and one such run folder per stage, `DIR/<stage>/`; each stage starts from the
weights of the stage before (`init`). Loading `DIR` then means loading its last stage.
Warm starts (`config.init`: named models from another run) are applied here: `train_run`
hands `loop.train` the `init_fn` of `warm_start_fn` (the loop loads no other run).
Ablations (`config.ablations`, `evaluate.py --ablations`) are run folders
`DIR/ablations/<name>/`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_collections
import tensorflow as tf

from sketch_tf.core import kernels
from sketch_tf.families import get_task_class
from sketch_tf.train import loop
from sketch_tf.train import strategy as strategy_lib
from sketch_tf.train.config import ConfigError, migrate, validate_config
from sketch_tf.train.config_sections import apply_overrides, without_recipes
from sketch_tf.train.tasks import Task

CONFIG_FILE = loop.CONFIG_FILE
ABLATIONS_SUBDIR = "ablations"


@dataclass
class Run:
    """A trained run, loaded. `workdir` is the folder holding `ckpt/` (the last stage's for a
    multi-stage run); `checkpoint` the restored checkpoint path; `step` its step."""

    workdir: str
    config: ml_collections.ConfigDict
    task: Task
    state: loop.TrainState
    checkpoint: str
    step: int

    @property
    def models(self) -> dict[str, Any]:
        return self.state.models

    def evaluate_and_write(
        self, before_write: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[dict[str, Any], str]:
        """Evaluates this run's models (`task.evaluate(models, workdir)`) and writes the
        result for its step to `<workdir>/eval` (TensorBoard and `metrics_<step>.json`);
        `before_write(result)` may add to the result first. Returns (result, JSON path)."""
        return loop.evaluate_and_write(
            self.task, self.models, self.workdir, self.step, before_write
        )

    def manifest(self) -> dict[str, Any]:
        """What identifies the model of this run, stored with what it embeds (a serving
        gallery, a saved index) so that embeddings of another model are refused: the task,
        the checkpoint path and step, and the SHA-256 of the config's JSON."""
        config_json = json.dumps(json.loads(self.config.to_json()), sort_keys=True)
        return {
            "task": self.task.name,
            "checkpoint": os.path.abspath(self.checkpoint),
            "step": int(self.step),
            "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
        }


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """`<workdir>/config.json` as a ConfigDict in today's layout (`config.migrate`: old keys
    renamed, keys a run folder of an older version lacks filled in), so that code reads its
    values without fallbacks.

    Raises:
      FileNotFoundError naming the file; ValueError when it is not JSON; ConfigError naming
      the file when an old key cannot be migrated.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist (is {workdir} a trained run folder?)")
    try:
        with open(path) as f:
            stored = ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    try:
        return migrate(stored)
    except ConfigError as e:
        raise ConfigError([f"{path}: {p}" for p in e.problems]) from e


def stage_configs(
    config: ml_collections.ConfigDict, workdir: str
) -> list[tuple[str, ml_collections.ConfigDict, str]]:
    """The stages of `config` as (name, config of the stage, run folder of the stage).

    A config without stages is one unnamed stage in `workdir` itself. Stage i > 0 is
    initialised from stage i - 1 (`init.workdir`) unless its overrides set `init` itself;
    the first stage keeps the recipe's own `init`.
    """
    order = tuple(config.stage_order)
    if not order:
        return [("", config, workdir)]
    base = without_recipes(config)
    out = []
    for i, name in enumerate(order):
        overrides = config.stages[name]
        stage = apply_overrides(base, overrides, f"stages.{name}")
        stage_dir = os.path.join(workdir, name)
        if i > 0 and "init" not in overrides:
            stage.init.workdir = out[-1][2]
            stage.init.models = ()
        out.append((name, stage, stage_dir))
    return out


def final_stage_dir(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, Any]:
    """(run folder, config) of the stage that holds the run's final weights."""
    _, stage, stage_dir = stage_configs(config, workdir)[-1]
    return stage_dir, stage


def load_run(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> Run:
    """Loads a trained run for evaluation, export or a warm start.

    Args:
      workdir: the run folder given to train.py (for a multi-stage run: its top folder or one
        stage's folder).
      config: the config to build the models with (default: `<workdir>/config.json`);
        validated here.
      strategy: build the models under this strategy (default strategy when None).

    Returns:
      Run with the latest checkpoint restored (`expect_partial`: optimizer slots are not
      needed to evaluate).

    Raises:
      FileNotFoundError when there is no config or no checkpoint (naming the folder and the
      command that writes it); ConfigError for an invalid config; ValueError when the
      checkpoint does not match the models of the config.
    """
    config = config if config is not None else read_config(workdir)
    validate_config(config)
    run_dir, config = final_stage_dir(config, workdir)
    ckpt_dir = os.path.join(run_dir, loop.CHECKPOINT_SUBDIR)
    if tf.train.latest_checkpoint(ckpt_dir) is None:
        raise FileNotFoundError(
            f"no checkpoint in {ckpt_dir}: train first "
            f"(python train.py --config=... --workdir={workdir})"
        )
    kernels.configure(config.train.kernels)
    task = get_task_class(config.task)(config)
    state = loop.build_state(task, strategy)
    path = loop.restore_latest(state, ckpt_dir, for_training=False)
    return Run(run_dir, config, task, state, path, int(state.step.numpy()))


def copy_model_weights(src: Any, dst: Any, name: str, source: str) -> None:
    """Assigns every weight of Keras model `src` to the same-position weight of `dst`.

    Raises:
      ValueError naming the model, the variable and both shapes on any mismatch (nothing is
      assigned then).
    """
    sw, dw = src.weights, dst.weights
    if len(sw) != len(dw):
        raise ValueError(
            f"init: model {name!r} has {len(dw)} weights here but {len(sw)} in {source}: "
            "the two runs build different architectures for it"
        )
    for s, d in zip(sw, dw, strict=True):
        if tuple(s.shape) != tuple(d.shape):
            raise ValueError(
                f"init: model {name!r} variable {d.path!r} has shape {tuple(d.shape)} here but "
                f"{tuple(s.shape)} in {source} (variable {s.path!r})"
            )
    for s, d in zip(sw, dw, strict=True):
        d.assign(s)


def apply_init(
    state: loop.TrainState, init: ml_collections.ConfigDict, log: Callable[[str], None] = print
) -> list[str]:
    """Warm start: restores `init.models` (all models both runs have, when empty) from the
    latest checkpoint of the run in `init.workdir` into `state`. Returns the restored model
    names.

    Raises:
      FileNotFoundError when `init.workdir` holds no trained run; ValueError when that run
      stopped before its `train.num_steps` (an unfinished earlier stage: finish it first), or
      naming the model (and variable) when a model is missing there or its weights do not fit.
    """
    source = load_run(str(init.workdir))
    planned = int(source.config.train.num_steps)
    if source.step < planned:
        raise ValueError(
            f"init.workdir={init.workdir}: that run is unfinished (step {source.step} of "
            f"{planned}); finish it first (python train.py --workdir={init.workdir} resumes "
            "it, or the multi-stage recipe resumes its stage)"
        )
    wanted = tuple(init.models)
    names = list(wanted) or sorted(m for m in state.models if m in source.state.models)
    for name in names:
        if name not in state.models:
            raise ValueError(
                f"init.models: {name!r} is not a model of this run {sorted(state.models)}"
            )
        if name not in source.state.models:
            raise ValueError(
                f"init.models: model {name!r} is not in {source.checkpoint} (it has "
                f"{sorted(source.state.models)})"
            )
        copy_model_weights(source.state.models[name], state.models[name], name, source.checkpoint)
    if not names:
        raise ValueError(
            f"init: no model in common between this run {sorted(state.models)} and "
            f"{source.checkpoint} {sorted(source.state.models)}"
        )
    log(f"initialised {names} from {source.checkpoint}")
    return names


def warm_start_fn(
    config: ml_collections.ConfigDict, log: Callable[[str], None] = print
) -> loop.InitFn | None:
    """The `init_fn` for `loop.train` of `config`: `apply_init` of its `init` section, or None
    when it sets no `init.workdir` (the run starts from the models' own initialisation)."""
    if not config.init.workdir:
        return None
    return functools.partial(apply_init, init=config.init, log=log)


def stage_done(stage_config: ml_collections.ConfigDict, stage_dir: str) -> bool:
    """True when `stage_dir` holds a checkpoint at `train.num_steps` or later (cheap: reads
    the checkpoint index only)."""
    step = loop.checkpoint_step(os.path.join(stage_dir, loop.CHECKPOINT_SUBDIR))
    return step is not None and step >= int(stage_config.train.num_steps)


def train_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    strategy: tf.distribute.Strategy | None = None,
    *,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> loop.TrainResult:
    """Trains a config into `workdir`: one `loop.train`, or every stage of a multi-stage
    recipe in order. A finished stage is never rerun; a killed run resumes inside the stage
    it was in. Returns the last stage's TrainResult (status `interrupted` stops the recipe).
    """
    stages = stage_configs(config, workdir)
    if len(stages) > 1 and strategy_lib.is_chief(strategy or tf.distribute.get_strategy()):
        loop.write_config(config, workdir)
    result = None
    for name, stage, stage_dir in stages:
        if name and stage_done(stage, stage_dir):
            ckpt_dir = os.path.join(stage_dir, loop.CHECKPOINT_SUBDIR)
            log(f"stage {name!r} already finished in {stage_dir}")
            result = loop.TrainResult(
                loop.checkpoint_step(ckpt_dir),
                "completed",
                checkpoint=tf.train.latest_checkpoint(ckpt_dir),
            )
            continue
        if name:
            log(f"stage {name!r} -> {stage_dir}")
        task = get_task_class(stage.task)(stage)
        result = loop.train(
            task,
            stage_dir,
            strategy,
            init_fn=warm_start_fn(stage, log),
            stop_after_steps=stop_after_steps,
            log=log,
        )
        if result.status != "completed":
            break
    return result


def select_ablations(config: ml_collections.ConfigDict, names: list[str]) -> list[str]:
    """The ablations of `config.ablations` that `names` (`evaluate.py --ablations`) asks for:
    `["all"]` means every one, in name order.

    Raises:
      ValueError naming the unknown names and the ablations the config defines.
    """
    known = sorted(config.ablations.keys())
    names = known if list(names) == ["all"] else list(names)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"--ablations: unknown {unknown}; this config defines {known}")
    return names


def run_ablations(
    config: ml_collections.ConfigDict,
    workdir: str,
    result: dict[str, Any],
    names: list[str],
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Trains (or resumes) and evaluates each named ablation of `config.ablations` in
    `<workdir>/ablations/<name>`, and adds to `result` the scalars `ablation/<name>/<key>` for
    the task's headline keys and a table comparing them with the model.

    Args:
      config: the main run's config (with its `ablations`).
      workdir: the main run folder.
      result: the main run's evaluation result (modified in place).
      names: ablation names; `["all"]` means every ablation of the config.

    Returns:
      name -> the ablation's own evaluation result.

    Raises:
      ValueError naming unknown ablations (and the known ones).
    """
    names = select_ablations(config, names)
    task_class = get_task_class(config.task)
    keys = [h.key for h in task_class.headlines]
    baselines = [(b_name, b_key) for h in task_class.headlines for b_name, b_key in h.baselines]
    scalars = result.setdefault("scalars", {})
    rows = [["model"] + [scalars.get(k, float("nan")) for k in keys]]
    out = {}
    for name in names:
        ablation = apply_overrides(
            without_recipes(config, keep_stages=True), config.ablations[name], f"ablations.{name}"
        )
        validate_config(ablation)
        ab_dir = os.path.join(workdir, ABLATIONS_SUBDIR, name)
        log(f"ablation {name!r} -> {ab_dir}")
        train_run(ablation, ab_dir, log=log)
        ab_result, _ = load_run(ab_dir, ablation).evaluate_and_write()
        for k in keys:
            if k in ab_result.get("scalars", {}):
                scalars[f"ablation/{name}/{k}"] = float(ab_result["scalars"][k])
        rows.append(
            [f"ablation {name}"] + [ab_result.get("scalars", {}).get(k, float("nan")) for k in keys]
        )
        out[name] = ab_result
    seen_base = set()
    for b_name, b_key in baselines:
        if b_name in seen_base or b_key not in scalars:
            continue
        seen_base.add(b_name)
        # A baseline row holds, per headline column, that headline's own baseline value.
        row = [b_name]
        for h in task_class.headlines:
            match = [bk for bn, bk in h.baselines if bn == b_name]
            row.append(scalars.get(match[0], float("nan")) if match else float("nan"))
        rows.append(row)
    result.setdefault("tables", {})["ablations (same data, same evaluation)"] = {
        "header": ["run"] + keys,
        "rows": rows,
    }
    return out


__all__ = [
    "Run",
    "apply_init",
    "copy_model_weights",
    "final_stage_dir",
    "load_run",
    "read_config",
    "run_ablations",
    "select_ablations",
    "stage_configs",
    "stage_done",
    "train_run",
    "warm_start_fn",
]
