"""The parts every config shares, below the families: the `train` section and the run
sections (`init`, `stage_order`, `stages`, `ablations`) with their defaults and checks, the
dotted-key helpers, and the one variant mechanism of the config files (`variant_config`).

Each family's `sketch_tf/families/<family>/config.py` builds its defaults from these; the
whole-config checks and the migration of stored configs, which need the family registry, are
`sketch_tf.train.config` (above the families).

Sections every family's config has (`add_run_sections`), read by generic code only:

- `init`: warm start. `init.workdir` names another run folder; `init.models` the models to
  restore from its latest checkpoint (empty: every model both runs have). Applied when a run
  starts from scratch (a resumed run has it in its own checkpoint).
- `train.trainable`: model names the optimizer updates (empty: all); the others are frozen.
- `stage_order` + `stages`: a multi-stage recipe. `stages.<name>` is a partial config tree of
  overrides; `train.py` runs the stages in `stage_order` into `<workdir>/<name>/`, each one
  initialised from the stage before (`sketch_tf.train.run`).
- `ablations`: name -> partial config tree of overrides, run by `evaluate.py --ablations`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "piecewise")
#: Values of the scripts' `--strategy` flag (built by `sketch_tf.train.strategy`).
STRATEGY_NAMES = ("auto", "default", "mirrored", "multi_worker")
#: How several workers split the training input (`train.input_sharding`, train/loop.py).
INPUT_SHARDING = ("auto", "file", "data")
#: Values of `train.precision`: the Keras dtype policy the models are built under
#: (`sketch_tf.train.precision`).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
#: `train.kernels`: the values of `sketch_tf.core.kernels.CHOICES` (kept TensorFlow-free here:
#: config files import this module).
KERNEL_CHOICES = ("auto", "xla", "tf")


class ConfigError(ValueError):
    """A config holds values that cannot work; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({len(self.problems)} problem(s)):\n{lines}")


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


def retrieval_config(task: str, root: str, test_split: str = "test") -> ml_collections.ConfigDict:
    """The start of a retrieval family's `defaults()`: `task`, `seed` 0 and the record keys
    every retrieval family reads, `data.root` (the records folder), `data.train_split` /
    `data.test_split` (its sub-folders read for training and for evaluation) and
    `data.sketch_domain` (the domain name of the query sketches)."""
    config = ml_collections.ConfigDict({"task": task, "seed": 0})
    config.data = ml_collections.ConfigDict(
        {"root": root, "train_split": "train", "test_split": test_split, "sketch_domain": "sketch"}
    )
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
            # float32, mixed_float16 (GPUs; loss scaling) or mixed_bfloat16 (bf16 CPUs, TPUs,
            # recent GPUs): the Keras policy the models compute in; their outputs, the
            # losses and exports stay float32 (sketch_tf/train/precision.py).
            "precision": "float32",
            # XLA-compiled or plain-TF kernels of the input ops that have both (the training
            # resample and colour jitter, the zoom sampler): "auto" = the faster on this
            # machine, measured once and cached (sketch_tf.core.kernels), or "xla" / "tf".
            # Process-wide (the kernels are the machine's, not a family's); same values.
            "kernels": "auto",
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


def variants_by_name(*edits: Callable[[ml_collections.ConfigDict], None]) -> dict:
    """`VARIANTS` of a config file: variant name (the edit function's name) -> the function
    editing `defaults()` in place, in the order given (the order errors list them in)."""
    return {edit.__name__: edit for edit in edits}


def config_getter(
    family: str,
    defaults: Callable[[], ml_collections.ConfigDict],
    variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
    default: str = "synthetic",
) -> Callable[..., ml_collections.ConfigDict]:
    """The `get_config(arg)` of `configs/<family>.py` that absl's config flags call:
    `variant_config(family, defaults, variants, arg, default)`."""

    def get_config(arg: str = default) -> ml_collections.ConfigDict:
        return variant_config(family, defaults, variants, arg, default)

    get_config.__doc__ = f"`configs/{family}.py:<variant>`: one of {', '.join(variants)}."
    return get_config


def root_problems(data: ml_collections.ConfigDict) -> list[str]:
    """The problem of an empty `data.root` (the folder of the record splits), if any."""
    return [] if data.root else ["data.root must name the folder holding the record splits"]


def bool_problems(section: ml_collections.ConfigDict, where: str, keys) -> list[str]:
    """`<where>.<key> must be True or False` for each of `keys` whose value in `section` (the
    config section at dotted path `where`) is not a bool."""
    return [
        f"{where}.{key} must be True or False, got {section[key]!r}"
        for key in keys
        if not isinstance(section[key], bool)
    ]


def check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def validate_train_config(train: ml_collections.ConfigDict) -> list[str]:
    """Problems in `config.train` (empty list when valid)."""
    p: list[str] = []
    check(
        p,
        isinstance(train.batch_size, int) and train.batch_size > 0,
        f"train.batch_size must be a positive integer, got {train.batch_size!r}",
    )
    check(
        p,
        isinstance(train.num_steps, int) and train.num_steps > 0,
        f"train.num_steps must be a positive integer, got {train.num_steps!r}",
    )
    check(
        p,
        isinstance(train.steps_per_epoch, int) and train.steps_per_epoch > 0,
        f"train.steps_per_epoch must be a positive integer, got {train.steps_per_epoch!r}",
    )
    check(
        p,
        train.optimizer in OPTIMIZERS,
        f"train.optimizer must be one of {OPTIMIZERS}, got {train.optimizer!r}",
    )
    check(
        p,
        train.input_sharding in INPUT_SHARDING,
        f"train.input_sharding must be one of {INPUT_SHARDING}, got {train.input_sharding!r}",
    )
    check(
        p,
        train.kernels in KERNEL_CHOICES,
        f"train.kernels must be one of {KERNEL_CHOICES}, got {train.kernels!r}",
    )
    check(
        p,
        isinstance(train.learning_rate, (int, float)) and train.learning_rate > 0,
        f"train.learning_rate must be > 0, got {train.learning_rate!r}",
    )
    check(
        p, train.weight_decay >= 0, f"train.weight_decay must be >= 0, got {train.weight_decay!r}"
    )
    check(p, train.clipnorm >= 0, f"train.clipnorm must be >= 0, got {train.clipnorm!r}")
    check(
        p,
        train.lr_schedule in LR_SCHEDULES,
        f"train.lr_schedule must be one of {LR_SCHEDULES}, got {train.lr_schedule!r}",
    )
    check(
        p,
        isinstance(train.warmup_steps, int) and 0 <= train.warmup_steps,
        f"train.warmup_steps must be an integer >= 0, got {train.warmup_steps!r}",
    )
    if train.lr_schedule == "piecewise":
        bounds, values = tuple(train.lr_boundaries), tuple(train.lr_values)
        check(
            p,
            len(values) == len(bounds) + 1,
            "train.lr_values must have one more entry than train.lr_boundaries "
            f"(got {len(values)} values for {len(bounds)} boundaries)",
        )
        check(
            p,
            list(bounds) == sorted(bounds) and all(b > 0 for b in bounds),
            f"train.lr_boundaries must be increasing positive steps, got {bounds!r}",
        )
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        value = train[key]
        check(
            p,
            isinstance(value, int) and value > 0,
            f"train.{key} must be a positive integer, got {value!r}",
        )
    check(
        p,
        isinstance(train.eval_every, int) and train.eval_every >= 0,
        f"train.eval_every must be an integer >= 0, got {train.eval_every!r}",
    )
    check(
        p,
        train.precision in PRECISIONS,
        f"train.precision must be one of {PRECISIONS}, got {train.precision!r} (mixed_float16 "
        "for GPUs, mixed_bfloat16 for CPUs / accelerators with bfloat16)",
    )
    trainable = train.trainable
    check(
        p,
        isinstance(trainable, (tuple, list)) and all(isinstance(n, str) for n in trainable),
        f"train.trainable must be a tuple of model names, got {trainable!r}",
    )
    return p


ABSENT = object()


def get_dotted(config, dotted: str):
    """The value at `dotted` ("data.root") in `config`, or `ABSENT`."""
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return ABSENT
        node = node[part]
    return node


def set_dotted(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    """Sets `dotted` in `config`, adding the missing sections on the way."""
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    node[last] = value


def delete_dotted(config: ml_collections.ConfigDict, dotted: str) -> None:
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
    check(
        p,
        all(isinstance(m, str) for m in models),
        f"init.models must be model names, got {models!r}",
    )
    check(
        p,
        not models or bool(config.init.workdir),
        f"init.models={models!r} needs init.workdir (the run to restore them from)",
    )
    order = tuple(config.stage_order or ())
    stages = config.stages or {}
    names = set(stages.keys()) if stages else set()
    check(
        p,
        len(set(order)) == len(order),
        f"stage_order lists a stage twice: {order!r}",
    )
    check(
        p,
        set(order) == names,
        f"stage_order {order!r} and the stages defined in config.stages {sorted(names)} "
        "must name the same stages",
    )
    for name in order:
        check(
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
        if get_dotted(config, old) is not ABSENT
    ]
    p += [
        f"{old} is gone: it is {what} now"
        for old, (what, _) in (derived or {}).items()
        if get_dotted(config, old) is not ABSENT
    ]
    return p
