"""Configuration defaults and validation shared by every task.

Configs are `ml_collections.ConfigDict`s built by `configs/<task>.py:get_config(variant)`.
Every script validates the whole config with `validate_config` before doing any heavy work:
all problems are collected and reported together, and nothing is written.
"""

from __future__ import annotations

import ml_collections

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "piecewise")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


class ConfigError(ValueError):
    """A config holds values that cannot work; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({len(self.problems)} problem(s)):\n{lines}")


def load_project_config(family: str, variant: str) -> ml_collections.ConfigDict:
    """`get_config(variant)` of the project's `configs/<family>.py` (outside absl flags: the
    main job, benches and tests). Raises FileNotFoundError naming the file when absent."""
    import importlib.util
    import os

    from sketch_tf.paths import PROJECT_ROOT

    path = os.path.join(PROJECT_ROOT, "configs", f"{family}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config file for family {family!r}")
    spec = importlib.util.spec_from_file_location(f"configs_{family}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def base_train_config() -> ml_collections.ConfigDict:
    """Fields of `config.train` common to every task (tasks override values, never names)."""
    return ml_collections.ConfigDict(
        {
            "batch_size": 32,  # global batch size, split across replicas
            "num_steps": 1000,
            "steps_per_epoch": 100,  # converts steps to epochs for epoch-based schedules
            "optimizer": "adam",
            "learning_rate": 1e-3,
            "weight_decay": 0.0,
            "momentum": 0.9,  # sgd only
            "clipnorm": 0.0,  # 0 = off; global-norm clipping of the gradients
            "lr_schedule": "constant",
            "warmup_steps": 0,
            "lr_boundaries": (),  # piecewise: step boundaries
            "lr_values": (),  # piecewise: len(boundaries) + 1 multipliers of learning_rate
            "log_every": 10,
            "checkpoint_every": 200,
            "keep_checkpoints": 3,
            "eval_every": 0,  # 0 = evaluate only at the end of training
            "deterministic": True,  # tf.config.experimental.enable_op_determinism()
        }
    )


def _check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def validate_train_config(train: ml_collections.ConfigDict) -> list[str]:
    """Problems in `config.train` (empty list when valid)."""
    p: list[str] = []
    _check(
        p,
        isinstance(train.batch_size, int) and train.batch_size > 0,
        f"train.batch_size must be a positive integer, got {train.batch_size!r}",
    )
    _check(
        p,
        isinstance(train.num_steps, int) and train.num_steps > 0,
        f"train.num_steps must be a positive integer, got {train.num_steps!r}",
    )
    _check(
        p,
        isinstance(train.steps_per_epoch, int) and train.steps_per_epoch > 0,
        f"train.steps_per_epoch must be a positive integer, got {train.steps_per_epoch!r}",
    )
    _check(
        p,
        train.optimizer in OPTIMIZERS,
        f"train.optimizer must be one of {OPTIMIZERS}, got {train.optimizer!r}",
    )
    _check(
        p,
        isinstance(train.learning_rate, (int, float)) and train.learning_rate > 0,
        f"train.learning_rate must be > 0, got {train.learning_rate!r}",
    )
    _check(
        p, train.weight_decay >= 0, f"train.weight_decay must be >= 0, got {train.weight_decay!r}"
    )
    _check(p, train.clipnorm >= 0, f"train.clipnorm must be >= 0, got {train.clipnorm!r}")
    _check(
        p,
        train.lr_schedule in LR_SCHEDULES,
        f"train.lr_schedule must be one of {LR_SCHEDULES}, got {train.lr_schedule!r}",
    )
    _check(
        p,
        isinstance(train.warmup_steps, int) and 0 <= train.warmup_steps,
        f"train.warmup_steps must be an integer >= 0, got {train.warmup_steps!r}",
    )
    if train.lr_schedule == "piecewise":
        bounds, values = tuple(train.lr_boundaries), tuple(train.lr_values)
        _check(
            p,
            len(values) == len(bounds) + 1,
            "train.lr_values must have one more entry than train.lr_boundaries "
            f"(got {len(values)} values for {len(bounds)} boundaries)",
        )
        _check(
            p,
            list(bounds) == sorted(bounds) and all(b > 0 for b in bounds),
            f"train.lr_boundaries must be increasing positive steps, got {bounds!r}",
        )
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        value = train[key]
        _check(
            p,
            isinstance(value, int) and value > 0,
            f"train.{key} must be a positive integer, got {value!r}",
        )
    _check(
        p,
        isinstance(train.eval_every, int) and train.eval_every >= 0,
        f"train.eval_every must be an integer >= 0, got {train.eval_every!r}",
    )
    return p


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Validates a whole config: common sections, then the task's own `validate_config`.

    Raises:
      ConfigError: listing every problem found.
    """
    from sketch_tf.train import tasks

    problems: list[str] = []
    names = tasks.known_task_names()
    if "task" not in config:
        raise ConfigError([f"config has no 'task' field (one of: {names})"])
    if config.task not in names:
        raise ConfigError([f"task must be one of {names}, got {config.task!r}"])
    _check(
        problems,
        isinstance(config.get("seed"), int),
        f"seed must be an integer, got {config.get('seed')!r}",
    )
    if "train" not in config:
        problems.append("config has no 'train' section")
    else:
        problems.extend(validate_train_config(config.train))
    problems.extend(tasks.get_task_class(config.task).validate_config(config))
    if problems:
        raise ConfigError(problems)
