"""Whole configs, above the families: `validate_config` (the shared sections, then the
family's own checks) and `migrate` (a stored `config.json` of an older version in today's
layout), plus loading the project's config files outside absl flags.

Configs are `ml_collections.ConfigDict`s built by `configs/<task>.py:get_config(variant)`.
Every script validates the whole config with `validate_config` before doing any heavy work:
all problems are collected and reported together, and nothing is written.

One config truth per family: `sketch_tf/families/<family>/config.py` holds the complete
defaults (`defaults()`) beside their checks (`validate(config)`), and what an older run folder
keeps for a key it lacks. `configs/<family>.py` holds only the variants
(`sketch_tf.train.config_sections.variant_config`). A stored `config.json` is read through
`migrate`, which renames old keys and fills every missing key, so code reads config values
without fallbacks. The shared sections and their checks are `sketch_tf.train.config_sections`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import ModuleType

import ml_collections

from sketch_tf.train.config_sections import (
    ABSENT,
    ConfigError,
    add_run_sections,
    base_train_config,
    check,
    delete_dotted,
    get_dotted,
    old_key_problems,
    set_dotted,
    validate_run_sections,
    validate_train_config,
)

#: Keys renamed in every family with their meaning unchanged: old dotted key -> new dotted key
#: (a family adds its own in its config module's `RENAMED_KEYS`). `migrate` moves the value
#: of a stored config.json; a config that still has an old key (a copied config file) fails
#: validation naming the new one.
RENAMED_KEYS = {
    "data.unseen_categories": "data.unseen_classes",
}


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


# ---- stored configs: old keys and missing keys ---------------------------------------------


def family_config_modules() -> dict[str, ModuleType]:
    """Family name -> its config module, `sketch_tf/families/<name>/config.py` (the family
    Task's `config_module`), whose `defaults()`, `RENAMED_KEYS`, `DERIVED_KEYS`,
    `OLD_RUN_VALUES` and `FREE_FORM` `migrate` and `validate_config` read."""
    from sketch_tf.families import family_names, get_task_class

    return {name: get_task_class(name).config_module for name in family_names()}


def _family_config(task: str | None) -> ModuleType | None:
    """The config module of task `task`; None for a task registered at run time (tests)."""
    from sketch_tf.families import get_task_class, known_task_names

    if task not in known_task_names():
        return None
    return get_task_class(task).config_module


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
    family = _family_config(task)
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
            set_dotted(template, key, value)
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


def _rename(tree: ml_collections.ConfigDict, renamed: Mapping[str, str], where: str) -> list:
    """Moves every old key of `renamed` in `tree` to its new key; problems where both are
    present with different values. `where`: the tree's dotted name for messages."""
    problems = []
    for old, new in renamed.items():
        value = get_dotted(tree, old)
        if value is ABSENT:
            continue
        present = get_dotted(tree, new)
        if present is not ABSENT and present != value:
            problems.append(
                f"{where}{old}={value!r} was renamed {new}, which holds {present!r} as well"
            )
            continue
        delete_dotted(tree, old)
        set_dotted(tree, new, value)
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
    family = _family_config(out.get("task"))
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
        value = get_dotted(out, old)
        if value is ABSENT:
            continue
        if value != value_now(out):
            problems.append(f"{old}={value!r} is gone, and {what} is {value_now(out)!r}")
        else:
            delete_dotted(out, old)
    if problems:
        raise ConfigError(problems)
    return out


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Validates a whole config: common sections, then the task's own `validate_config`.

    Raises:
      ConfigError: listing every problem found.
    """
    from sketch_tf.families import get_task_class, known_task_names

    problems: list[str] = []
    names = known_task_names()
    if "task" not in config:
        raise ConfigError([f"config has no 'task' field (one of: {names})"])
    if config.task not in names:
        raise ConfigError([f"task must be one of {names}, got {config.task!r}"])
    check(
        problems,
        isinstance(config.get("seed"), int),
        f"seed must be an integer, got {config.get('seed')!r}",
    )
    family = _family_config(config.task)
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
    problems.extend(get_task_class(config.task).validate_config(config))
    if problems:
        raise ConfigError(problems)
