"""Configuration defaults and validation shared by every task.

Configs are `ml_collections.ConfigDict`s built by `configs/<task>.py:get_config(variant)`.
Every script validates the whole config with `validate_config` before doing any heavy work:
all problems are collected and reported together, and nothing is written.

Sections every family's config has (`add_run_sections`), read by generic code only:

- `init`: warm start. `init.workdir` names another run folder; `init.models` the models to
  restore from its latest checkpoint (empty: every model both runs have). Applied when a run
  starts from scratch (a resumed run has it in its own checkpoint).
- `train.trainable`: model names the optimizer updates (empty: all); the others are frozen.
- `stage_order` + `stages`: a multi-stage recipe. `stages.<name>` is a partial config tree of
  overrides; `train.py` runs the stages in `stage_order` into `<workdir>/<name>/`, each one
  initialised from the stage before (`sketch_tf.train.run`).
- `ablations`: name -> partial config tree of overrides, run by `evaluate.py --ablations`.

One config truth per family: `sketch_tf/families/<family>/config.py` holds the complete
defaults (`defaults()`) beside their checks (`validate(config)`), and what an older run folder
keeps for a key it lacks. `configs/<family>.py` holds only the variants (`variant_config`).
A stored `config.json` is read through `migrate`, which renames old keys and fills every
missing key, so code reads config values without fallbacks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import ml_collections

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "piecewise")
#: Values of the scripts' `--strategy` flag (built by `sketch_tf.train.strategy`).
STRATEGY_NAMES = ("auto", "default", "mirrored", "multi_worker")
#: How several workers split the training input (`train.input_sharding`, train/loop.py).
INPUT_SHARDING = ("auto", "file", "data")

#: Keys renamed in every family with their meaning unchanged: old dotted key -> new dotted key
#: (a family adds its own in its config module's `RENAMED_KEYS`). `migrate` moves the value
#: of a stored config.json; a config that still has an old key (a copied config file) fails
#: validation naming the new one.
RENAMED_KEYS = {
    "data.unseen_categories": "data.unseen_classes",
}


class ConfigError(ValueError):
    """A config holds values that cannot work; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({len(self.problems)} problem(s)):\n{lines}")


def project_config_module(family: str) -> ModuleType:
    """The project's `configs/<family>.py` as a module (its `get_config`, `VARIANTS`), loaded
    outside absl flags (the main job, benches and tests). Raises FileNotFoundError naming the
    file when absent."""
    import importlib.util
    import os

    from sketch_tf.paths import PROJECT_ROOT

    path = os.path.join(PROJECT_ROOT, "configs", f"{family}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config file for family {family!r}")
    spec = importlib.util.spec_from_file_location(f"configs_{family}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_project_config(family: str, variant: str) -> ml_collections.ConfigDict:
    """`get_config(variant)` of the project's `configs/<family>.py` (outside absl flags: the
    main job, benches and tests). Raises FileNotFoundError naming the file when absent."""
    return project_config_module(family).get_config(variant)


def variant_config(
    family: str,
    defaults: Callable[[], ml_collections.ConfigDict],
    variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
    arg: str | None,
    default: str = "synthetic",
) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `configs/<family>.py`, the one variant mechanism of the config
    files: `defaults()` (the family's complete config) edited in place by `variants[arg]`.

    Args:
      family: the config file's family, for the error message.
      defaults: `sketch_tf.families.<family>.config.defaults`.
      variants: variant name -> function editing the defaults in place; its docstring says
        what the variant is (the smoke variants, `main_job.py --smoke`, are `runlocal`-style
        blocks shrinking a recipe to seconds).
      arg: what follows the colon of `--config=configs/<family>.py:<arg>` ("" / None: the
        default variant).
      default: the variant of an empty `arg`.

    Raises:
      ValueError naming the config file, the unknown variant and the known ones.
    """
    variant = arg or default
    if variant not in variants:
        raise ValueError(
            f"configs/{family}.py: unknown variant {variant!r}; known: {', '.join(variants)}"
        )
    config = defaults()
    variants[variant](config)
    return config


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
            # Save the input pipeline's position (shuffle buffer, seeds, read offset) with each
            # checkpoint, so a resume decodes no batch twice (one replica; see train/loop.py).
            "save_input_position": True,
            # With more than one replica, BatchNormalization normalises with the statistics of
            # the global batch (all-reduced per layer) instead of each replica's share, so a
            # distributed step computes the losses of one replica on the same global batch.
            "sync_batch_norm": True,
            # Several workers: "file" (each reads its own shards), "data" (each computes the
            # global batches and keeps its replicas' rows: one replica's batches), or "auto"
            # (file when the task reads a plain record stream of >= one shard per worker).
            "input_sharding": "auto",
            "trainable": (),  # model names the optimizer updates; () = every model
        }
    )


def add_run_sections(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the generic `init`, `stage_order`, `stages` and `ablations` sections (see the
    module docstring) with their defaults, in place; returns `config`."""
    config.init = ml_collections.ConfigDict({"workdir": "", "models": ()})
    config.stage_order = ()
    config.stages = ml_collections.ConfigDict()
    config.ablations = ml_collections.ConfigDict()
    return config


def apply_overrides(
    config: ml_collections.ConfigDict, overrides, where: str
) -> ml_collections.ConfigDict:
    """A copy of `config` with a partial config tree `overrides` merged in.

    Nested dicts merge key by key; any other value replaces the config's. Every key must
    exist in `config` (a typo would otherwise silently train the wrong thing).

    Args:
      config: the full config (not modified).
      overrides: dict / ConfigDict, e.g. `{"loss": {"domain_weight": 0.0}}`.
      where: dotted name of `overrides` for error messages, e.g. "ablations.no_domain".

    Raises:
      ConfigError naming `<where>.<key>` for every key that is not in `config`.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    problems: list[str] = []

    def merge(dst, src, path):
        for key, value in dict(src).items():
            name = f"{path}.{key}"
            if key not in dst:
                problems.append(f"{name}: no such key in the config ({sorted(dst.keys())})")
                continue
            if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(
                dst[key], ml_collections.ConfigDict
            ):
                merge(dst[key], value, name)
            else:
                if isinstance(value, (dict, ml_collections.ConfigDict)):
                    value = ml_collections.ConfigDict(dict(value))
                try:
                    dst[key] = value
                except TypeError as e:  # ConfigDict keeps field types
                    problems.append(f"{name}: {e}")

    merge(out, overrides.to_dict() if hasattr(overrides, "to_dict") else overrides, where)
    if problems:
        raise ConfigError(problems)
    return out


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
        train.input_sharding in INPUT_SHARDING,
        f"train.input_sharding must be one of {INPUT_SHARDING}, got {train.input_sharding!r}",
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
    trainable = train.trainable
    _check(
        p,
        isinstance(trainable, (tuple, list)) and all(isinstance(n, str) for n in trainable),
        f"train.trainable must be a tuple of model names, got {trainable!r}",
    )
    return p


_ABSENT = object()


def _get_dotted(config, dotted: str):
    """The value at `dotted` ("data.root") in `config`, or `_ABSENT`."""
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _set_dotted(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    """Sets `dotted` in `config`, adding the missing sections on the way."""
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    node[last] = value


def _delete_dotted(config: ml_collections.ConfigDict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    del node[last]


def validate_run_sections(config: ml_collections.ConfigDict) -> list[str]:
    """Problems in `init`, `stage_order` / `stages` and `ablations` (present in every config:
    `add_run_sections`, and `migrate` for a config saved before they existed)."""
    p: list[str] = []
    models = tuple(config.init.models or ())
    _check(
        p,
        all(isinstance(m, str) for m in models),
        f"init.models must be model names, got {models!r}",
    )
    _check(
        p,
        not models or bool(config.init.workdir),
        f"init.models={models!r} needs init.workdir (the run to restore them from)",
    )
    order = tuple(config.stage_order or ())
    stages = config.stages or {}
    names = set(stages.keys()) if stages else set()
    _check(
        p,
        len(set(order)) == len(order),
        f"stage_order lists a stage twice: {order!r}",
    )
    _check(
        p,
        set(order) == names,
        f"stage_order {order!r} and the stages defined in config.stages {sorted(names)} "
        "must name the same stages",
    )
    for name in order:
        _check(
            p,
            isinstance(name, str) and name.isidentifier(),
            f"stage name {name!r} must be an identifier (it becomes a folder name)",
        )
    for section in ("stages", "ablations"):
        tree = config[section] or {}
        base = without_recipes(config, keep_stages=section == "ablations")
        for name in tree.keys() if tree else ():
            try:
                apply_overrides(base, tree[name], f"{section}.{name}")
            except ConfigError as e:
                p.extend(e.problems)
    return p


def without_recipes(
    config: ml_collections.ConfigDict, keep_stages: bool = False
) -> ml_collections.ConfigDict:
    """A copy of `config` without its ablations and (unless `keep_stages`) its stages: the
    base that a stage's or an ablation's overrides apply to. An ablation of a multi-stage
    recipe keeps the stages (`keep_stages=True`) and runs the whole recipe."""
    out = ml_collections.ConfigDict(config.to_dict())
    sections = ("ablations",) if keep_stages else ("stages", "ablations")
    if not keep_stages and "stage_order" in out:
        out.stage_order = ()
    for section in sections:
        if section in out:
            out[section] = ml_collections.ConfigDict()
    return out


# ---- stored configs: old keys and missing keys ---------------------------------------------


def family_config_modules() -> dict[str, ModuleType]:
    """Task name -> its family's config module, `sketch_tf/families/<name>/config.py`, whose
    `defaults()`, `RENAMED_KEYS`, `DERIVED_KEYS`, `OLD_RUN_VALUES` and `FREE_FORM` `migrate`
    and `validate_config` read. A task registered at run time (tests) has none.
    """
    # Imported on use, not at the top: each of these modules imports this one
    # (`base_train_config`, `add_run_sections`). A new family is added here (tests check it).
    from sketch_tf.families.fg_sbir import config as fg_sbir
    from sketch_tf.families.style_sbir import config as style_sbir
    from sketch_tf.families.zooms import config as zooms
    from sketch_tf.families.zs_sbir import config as zs_sbir

    return {"fg_sbir": fg_sbir, "style_sbir": style_sbir, "zooms": zooms, "zs_sbir": zs_sbir}


#: The run sections an older run folder lacks are empty, not a family's recipe (style_sbir's
#: stages, zs_sbir's ablations): the code read their absence as "none".
_RUN_SECTIONS = ("init", "stage_order", "stages", "ablations")
#: Run sections whose keys are the user's (names of stages and ablations).
_FREE_FORM_RUN_SECTIONS = ("stages", "ablations")


def stored_config_template(task: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """What a config of `task` holds, as `migrate` fills it and `validate_config` requires it.

    Returns:
      (template, free_form): every key of the family's `defaults()` with the value a run
      folder written before the key existed keeps (`OLD_RUN_VALUES` where the code's old
      fallback differed from the default, empty run sections); the dotted keys whose sub-keys
      are the user's (their sub-keys are neither filled nor required). A task without a
      family config module: the generic `train` and run sections only.
    """
    family = family_config_modules().get(task)
    if family is None:
        template = ml_collections.ConfigDict({"train": base_train_config()})
    else:
        template = family.defaults()
        for section in _RUN_SECTIONS:
            del template[section]
    add_run_sections(template)
    free_form = _FREE_FORM_RUN_SECTIONS
    if family is not None:
        for key, value in family.OLD_RUN_VALUES.items():
            _set_dotted(template, key, value)
        free_form += tuple(family.FREE_FORM)
    return template, free_form


def _walk_missing(node, template, prefix: str, free_form: tuple[str, ...], fill: bool) -> list:
    """Dotted keys of `template` that `node` lacks (filled in from `template` if `fill`)."""
    missing = []
    for key in template.keys():
        dotted = f"{prefix}{key}"
        if key not in node:
            missing.append(dotted)
            if fill:
                node[key] = copy.deepcopy(template[key])
        elif (
            dotted not in free_form
            and isinstance(template[key], ml_collections.ConfigDict)
            and isinstance(node[key], ml_collections.ConfigDict)
        ):
            missing += _walk_missing(node[key], template[key], f"{dotted}.", free_form, fill)
    return missing


def missing_keys(config: ml_collections.ConfigDict) -> list[str]:
    """Dotted keys that a config of task `config.task` must have and `config` lacks (a
    config.json of an older version not read through `migrate`, a hand-made config)."""
    template, free_form = stored_config_template(config.task)
    return _walk_missing(config, template, "", free_form, fill=False)


def old_key_problems(
    config: ml_collections.ConfigDict,
    renamed: Mapping[str, str],
    derived: Mapping[str, tuple[str, Callable[[ml_collections.ConfigDict], Any]]] | None = None,
) -> list[str]:
    """One problem per old key that `config` still has (a config file copied from an older
    version; `migrate` updates a stored config.json).

    Args:
      renamed: old dotted key -> new dotted key (same meaning).
      derived: old dotted key -> (what gives its value now, e.g. "len(zooms.zooms)", the
        function computing it from a config).
    """
    p = [
        f"{old} was renamed {new}"
        for old, new in renamed.items()
        if _get_dotted(config, old) is not _ABSENT
    ]
    p += [
        f"{old} is gone: it is {what} now"
        for old, (what, _) in (derived or {}).items()
        if _get_dotted(config, old) is not _ABSENT
    ]
    return p


def _rename(tree: ml_collections.ConfigDict, renamed: Mapping[str, str], where: str) -> list:
    """Moves every old key of `renamed` in `tree` to its new key; problems where both are
    present with different values. `where`: the tree's dotted name for messages."""
    problems = []
    for old, new in renamed.items():
        value = _get_dotted(tree, old)
        if value is _ABSENT:
            continue
        present = _get_dotted(tree, new)
        if present is not _ABSENT and present != value:
            problems.append(
                f"{where}{old}={value!r} was renamed {new}, which holds {present!r} as well"
            )
            continue
        _delete_dotted(tree, old)
        _set_dotted(tree, new, value)
    return problems


def migrate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A stored config (`<workdir>/config.json`, maybe written by an older version) in
    today's layout, so that code reads its values without fallbacks. Applied where a stored
    config is read (`sketch_tf.train.run.read_config`); `config` is not modified.

    1. Renames: every old key of `RENAMED_KEYS` and of the family's `RENAMED_KEYS` moves to
       its new key, in the config and in its override trees (`stages.<name>`,
       `ablations.<name>`); a key of the family's `DERIVED_KEYS` (a value now computed from
       others) is dropped when it agrees with that value.
    2. Fills: every key of `stored_config_template` that the config lacks gets the
       template's value: the family's default, or, where the code read an absent key with a
       fallback that differs from today's default, that fallback (the family's
       `OLD_RUN_VALUES`: what the run was trained with); absent run sections are empty.

    Keys the config has keep their values, also keys today's defaults lack (a variant's
    `data.synthetic`). A task without a family config module gets the generic sections.

    Raises:
      ConfigError: an old key and its new key both hold different values, or a derived
        key disagrees with what it is today.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    family = family_config_modules().get(out.get("task"))
    renamed = dict(RENAMED_KEYS)
    if family is not None:
        renamed.update(family.RENAMED_KEYS)
    problems = _rename(out, renamed, "")
    for section in _FREE_FORM_RUN_SECTIONS:
        for name, tree in (out.get(section) or {}).items():
            if isinstance(tree, ml_collections.ConfigDict):
                problems += _rename(tree, renamed, f"{section}.{name}.")
    template, free_form = stored_config_template(out.get("task"))
    _walk_missing(out, template, "", free_form, fill=True)
    for old, (what, value_now) in (family.DERIVED_KEYS if family else {}).items():
        value = _get_dotted(out, old)
        if value is _ABSENT:
            continue
        if value != value_now(out):
            problems.append(f"{old}={value!r} is gone, and {what} is {value_now(out)!r}")
        else:
            _delete_dotted(out, old)
    if problems:
        raise ConfigError(problems)
    return out


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
    family = family_config_modules().get(config.task)
    old_keys = old_key_problems(config, RENAMED_KEYS)
    if family is not None:
        old_keys += old_key_problems(config, family.RENAMED_KEYS, family.DERIVED_KEYS)
    if old_keys:
        # Checked first and alone: the family's own checks would only add confusing noise.
        raise ConfigError(old_keys)
    missing = missing_keys(config)
    if missing:
        # Alone too: the checks below read every key without a fallback.
        raise ConfigError(
            [
                f"config lacks {', '.join(missing)}: a config.json of an older version is "
                "read through sketch_tf.train.config.migrate, a config file starts from "
                f"the defaults of its family (configs/{config.task}.py)"
            ]
        )
    problems.extend(validate_train_config(config.train))
    problems.extend(validate_run_sections(config))
    problems.extend(tasks.get_task_class(config.task).validate_config(config))
    if problems:
        raise ConfigError(problems)
