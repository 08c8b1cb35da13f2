"""GPU check: each family's GPU recipe for a few hundred steps on synthetic data under
MirroredStrategy, in float32 and in mixed_float16.

  python bench/gpu_check.py                                  # every family, 300 steps each
  python bench/gpu_check.py --families=zs_sbir --steps=100
  python bench/gpu_check.py --allow_cpu --recipes=smoke --steps=2 --warmup=1   # CPU smoke

Per family (and per stage of a multi-stage recipe) and per precision: the model, zoom and
training settings of the family's GPU recipe (`RECIPES`: e.g. configs/zs_sbir.py:sketchy)
on the records of its synthetic variant, rendered at the recipe's image size into a
temporary folder (`--per_category` instances per category). Weights start random: every
`backbone_weights` / `weights_path` of the model is emptied (GPU hosts may have no network,
and throughput does not depend on the weights), unless `--keep_weights`; a later stage
starts from scratch too. The first `--batches` training batches are held in memory and
cycled, so the figures are compute-bound (not input-bound) and the loss must fall as the
model fits those batches.

`loop.train` runs `--warmup + --steps` steps, logging every `--warmup` steps. Per run the
JSON holds `examples_per_s` over the logged intervals after the first (which holds
tracing), `loss_first` / `loss_last` (the mean total loss of the first and the last
interval) and, for a mixed precision, `ratio_vs_float32` (its examples/s over float32's;
`--precisions` picks the runs: float32 and mixed_float16 by default). `matmul_gflops` (and
`matmul_float16_gflops` on a GPU): a square matmul's rate on the same device in the same
run, to tell a slow card from a slow recipe.

Without a GPU it says so and exits 2, unless `--allow_cpu`: then the same code runs on the
CPU (the smoke test, tests/test_gpu_check.py: `--recipes=smoke`, the families' tiny
`synthetic_smoke` models). Exits 1 when a run failed (its error is in the JSON), 130 when
interrupted (SIGTERM / SIGINT; the figures measured so far are printed). The last stdout
line is one JSON object. Record the figures of a GPU run in the README.
"""

import json
import os
import re
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_args import cpu_description  # noqa: E402

from sketch_tf import cli  # noqa: E402

#: family -> (GPU recipe variant of configs/<family>.py, dotted overrides that make it the
#: GPU job its docstring describes).
RECIPES = {
    "zooms": ("sketchzooms", {}),
    "zs_sbir": ("sketchy", {}),
    "style_sbir": (
        "bam",
        {
            "model.structure.freeze_trunk": False,
            "model.style.freeze_trunk": False,
            "data.feature_cache": False,
        },
    ),
    "fg_sbir": ("shoes_gpu", {}),
}
#: `--recipes=smoke`: the tiny models of the smoke variants (for CPU smoke runs).
SMOKE_RECIPES = {family: ("synthetic_smoke", {}) for family in RECIPES}
#: Keys (dotted) of the recipe copied onto the synthetic variant, where both have them: what
#: the GPU computes (models, training, zoom views, sizes, augmentation, feature caching).
RECIPE_KEYS = (
    "model", "train", "zooms", "data.image_size", "data.crop_size", "data.feature_cache",
    "data.train_augment", "data.flip",
)  # fmt: skip

_FAMILIES = flags.DEFINE_list("families", list(RECIPES), "Families to check.")
_RECIPES = flags.DEFINE_enum("recipes", "gpu", ["gpu", "smoke"], "GPU recipes or smoke models.")
_STEPS = flags.DEFINE_integer("steps", 300, "Timed steps per run (a multiple of --warmup).")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed first steps; also the log interval.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Training batches held in memory and cycled.")
_PER_CATEGORY = flags.DEFINE_integer("per_category", 8, "Synthetic instances per category.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override train.batch_size.")
_IMAGE = flags.DEFINE_integer(
    "image_size", None, "Override data.image_size (the render, and data.crop_size in proportion)."
)
_PRECISIONS = flags.DEFINE_list(
    "precisions", ["float32", "mixed_float16"], "train.precision values to run (float32 first)."
)
_KEEP_WEIGHTS = flags.DEFINE_bool(
    "keep_weights", False, "Keep the recipes' backbone weights (default: random init)."
)
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Run on the CPU when no GPU is visible.")

_LOG_LINE = re.compile(r"^step (\d+)/\d+ \| loss (\S+) .*\| ([\d.]+) ex/s")


def matmul_gflops(dtype: str = "float32", n: int = 4096, repeats: int = 10) -> float:
    """GFLOP/s of `repeats` [n, n] x [n, n] matmuls of `dtype` on the default device (2 n^3
    flops each), after one untimed call. A stand-in for the shared FLOP-rate function of
    bench/bench_args.py once it exists."""
    import tensorflow as tf

    a = tf.random.uniform([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)

    @tf.function
    def run(x):
        for _ in range(repeats):
            x = tf.linalg.matmul(x, a) * tf.cast(1.0 / n, dtype)  # keep values bounded
        return tf.reduce_sum(tf.cast(x, tf.float32))

    run(a).numpy()
    start = time.perf_counter()
    run(a).numpy()
    return 2.0 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def device_name() -> str:
    """The first GPU's name (e.g. "NVIDIA H100 80GB HBM3"), or the CPU's description."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return cpu_description()
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{details.get('device_name', 'GPU')} x {len(gpus)}"


def recipe_config(family: str, recipes: dict, root: str):
    """The config of one check: the synthetic variant of `family` (its data, rendered into
    `root`) with `RECIPE_KEYS` of the recipe variant and its overrides, and the flags'
    sizes. Returns (config, synthetic render options)."""
    import ml_collections

    from sketch_tf.train.config import load_project_config
    from sketch_tf.train.config_sections import ABSENT, get_dotted, set_dotted

    variant, overrides = recipes[family]
    config = load_project_config(family, "synthetic")
    recipe = load_project_config(family, variant)
    for key in RECIPE_KEYS:
        value = get_dotted(recipe, key)
        if value is not ABSENT and get_dotted(config, key) is not ABSENT:
            if isinstance(value, ml_collections.ConfigDict):
                value = ml_collections.ConfigDict(value.to_dict())
            set_dotted(config, key, value)
    for key, value in overrides.items():
        set_dotted(config, key, value)
    if not _KEEP_WEIGHTS.value:
        _random_weights(config.model)
    if _BATCH.value:
        config.train.batch_size = _BATCH.value
    if _IMAGE.value:
        if "crop_size" in config.data:  # the same fraction of the smaller image
            scale = _IMAGE.value / int(config.data.image_size)
            config.data.crop_size = max(1, round(int(config.data.crop_size) * scale))
        config.data.image_size = _IMAGE.value
    config.data.root = root
    options = config.data.synthetic.to_dict()
    options.update(n_per_category=_PER_CATEGORY.value, image_size=int(config.data.image_size))
    return config, options


def _random_weights(section) -> None:
    """Empties every `backbone_weights` / `weights_path` key of a config section, nested
    sections included (the models then build from random weights)."""
    import ml_collections

    for key in list(section.keys()):
        if isinstance(section[key], ml_collections.ConfigDict):
            _random_weights(section[key])
        elif key in ("backbone_weights", "weights_path") and section[key]:
            section[key] = ""


def _cycled(task_cls, batches: int):
    """`task_cls` whose training input is its first `batches` batches, cached and cycled."""

    class Cycled(task_cls):
        def build_train_dataset(self, global_batch_size, seed, models=None, input_context=None):
            dataset = task_cls.build_train_dataset(self, global_batch_size, seed, models=models)
            return dataset.take(batches).cache().repeat()

    return Cycled


def run_check(task_cls, config, strategy, workdir: str) -> dict:
    """One `loop.train` of `config` (steps and logging from the flags); its figures."""
    from sketch_tf.train import loop

    warmup, steps = _WARMUP.value, _STEPS.value
    config.train.update(
        num_steps=warmup + steps,
        log_every=warmup,
        checkpoint_every=10**9,
        eval_every=0,
        save_input_position=False,
    )
    config.init.workdir, config.init.models = "", ()
    lines = []

    def log(line):
        match = _LOG_LINE.match(line)
        if match:
            lines.append((int(match[1]), float(match[2]), float(match[3])))
        elif line.startswith("warning"):
            print(line, file=sys.stderr)

    start = time.perf_counter()
    result = loop.train(_cycled(task_cls, _BATCHES.value)(config), workdir, strategy, log=log)
    if result.status != "completed":  # SIGTERM / SIGINT: the loop saved and returned
        raise KeyboardInterrupt(f"interrupted at step {result.step}")
    timed = [rate for _, _, rate in lines[1:]]
    if not timed:
        raise RuntimeError("the loop logged no interval after the warmup")
    return {
        # Equal-length intervals: the overall rate is the harmonic mean of theirs.
        "examples_per_s": round(len(timed) / sum(1.0 / r for r in timed), 2),
        "loss_first": round(lines[0][1], 4),
        "loss_last": round(lines[-1][1], 4),
        "steps": lines[-1][0],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def check_family(family: str, recipes: dict, strategy, tmp: str) -> dict:
    """{stage or family: {precision: figures, "ratio_vs_float32": ...}} for one family."""
    from sketch_tf.data.synthetic.prepare import prepare_synthetic
    from sketch_tf.families import get_task_class
    from sketch_tf.train.config import validate_config
    from sketch_tf.train.run import stage_configs

    root = os.path.join(tmp, family, "records")
    config, options = recipe_config(family, recipes, root)
    validate_config(config)
    prepare_synthetic(options.pop("task", config.task), root, **options)
    out = {"recipe": recipes[family][0], "batch_size": int(config.train.batch_size),
           "image_size": int(config.data.image_size)}  # fmt: skip
    for precision in _PRECISIONS.value:
        config.train.precision = precision
        for stage_name, stage, _ in stage_configs(config, os.path.join(tmp, family, precision)):
            key = stage_name or "run"
            workdir = os.path.join(tmp, family, precision, key)
            task_cls = get_task_class(stage.task)
            out.setdefault(key, {})[precision] = run_check(task_cls, stage, strategy, workdir)
    for runs in out.values():
        if isinstance(runs, dict) and "float32" in runs:
            for precision, figures in runs.items():
                if precision != "float32":
                    figures["ratio_vs_float32"] = round(
                        figures["examples_per_s"] / runs["float32"]["examples_per_s"], 3
                    )
    return out


def main(argv):
    cli.check_args(argv)
    unknown = sorted(set(_FAMILIES.value) - set(RECIPES))
    if unknown:
        cli.fail(f"--families: unknown {unknown}; known: {sorted(RECIPES)}")
    from sketch_tf.train.config_sections import PRECISIONS

    bad = [p for p in _PRECISIONS.value if p not in PRECISIONS]
    if bad or not _PRECISIONS.value:
        cli.fail(f"--precisions: {bad or 'none given'}; each must be one of {PRECISIONS}")
    if _STEPS.value <= 0 or _WARMUP.value < 1 or _STEPS.value % _WARMUP.value:
        cli.fail("--steps must be a positive multiple of --warmup (>= 1)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not _ALLOW_CPU.value:
        message = (
            "gpu_check: no GPU is visible to TensorFlow (tf.config.list_physical_devices('GPU') "
            "is empty: a CPU-only tensorflow wheel, or no CUDA driver); nothing was measured. "
            "Rerun on a GPU host, or with --allow_cpu to run the same code on the CPU"
        )
        print(message, file=sys.stderr)
        print(json.dumps({"error": message, "device": device_name()}))
        sys.exit(2)
    strategy = tf.distribute.MirroredStrategy()  # every GPU (or the CPU): one per process
    n = 4096 if gpus else 512
    result = {
        "device": device_name(),
        "gpu": bool(gpus),
        "replicas": int(strategy.num_replicas_in_sync),
        "recipes": _RECIPES.value,
        "steps": _STEPS.value,
        "warmup": _WARMUP.value,
        "matmul_gflops": round(matmul_gflops("float32", n), 1),
    }
    if gpus:
        result["matmul_float16_gflops"] = round(matmul_gflops("float16", n), 1)
    recipes = RECIPES if _RECIPES.value == "gpu" else SMOKE_RECIPES
    failed = False
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for family in _FAMILIES.value:
            try:
                result[family] = check_family(family, recipes, strategy, tmp)
            except KeyboardInterrupt as err:  # stop, but print what was measured
                interrupted = True
                result[family] = {"error": f"interrupted: {err}"}
                break
            except Exception as err:  # noqa: BLE001 - reported in the JSON, the others still run
                failed = True
                result[family] = {"error": f"{type(err).__name__}: {err}"[:2000]}
                print(f"gpu_check: {family} failed: {err}", file=sys.stderr)
    print(json.dumps(result))
    if interrupted:
        sys.exit(130)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
