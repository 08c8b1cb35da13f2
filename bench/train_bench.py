"""Training throughput of any task: input pipeline on vs in-memory tensors.

  python bench/train_bench.py --config=configs/zs_sbir.py:synthetic --steps=40
  python bench/train_bench.py --config=configs/zooms.py:synthetic --steps=20

Runs `train/loop.train` twice in throw-away workdirs with the config's model, batch size and
default strategy: once reading the task's real `tf.data` pipeline (`pipeline_examples_per_s`)
and once repeating one batch already materialised in memory (`in_memory_examples_per_s`, the
compute-bound ceiling). `ratio_vs_in_memory` = pipeline / in-memory: near 1 means training is
compute bound, well below 1 means the input pipeline is the bottleneck. The first
`--warmup` steps (tracing, autotune) are excluded. Prints one JSON object as the last line,
with `cpu_model` and `matmul_gflops` (the fp32 matmul rate measured in this run,
`bench_args.machine_figures`), `train_flops_per_example` (3 x the forward FLOPs of the
task's losses on one batch, `sketch_tf.models.flops`; an upper bound where a frozen trunk has
no backward) and `in_memory_fraction_of_matmul` / `pipeline_fraction_of_matmul`: examples/s x
that over the matmul rate.

The pipeline runs once with each kernel path of its input ops (`sketch_tf.core.kernels`:
`pipeline_examples_per_s_xla`, `_tf`) and, when the per-machine choice (`chosen_kernels`)
mixes them, once more with it; `pipeline_examples_per_s` is the chosen path's and
`ratio_chosen_vs_other` the chosen over the faster other one.
"""

import json
import os
import resource
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_args import cpu_description, fraction_of_matmul, machine_figures  # noqa: E402

from sketch_tf import cli  # noqa: E402

_CONFIG = cli.define_config_flag(trained_run=False)
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per mode.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps before timing.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override train.batch_size.")


def _measure(task, config, steps: int, warmup: int) -> float:
    """(examples/s over `steps` steps after `warmup` steps, wall seconds); steps are logged in
    intervals of `warmup` steps (loop's own interval timer)."""
    from sketch_tf.train import loop

    config.train.num_steps = warmup + steps
    config.train.log_every = warmup if warmup else steps
    config.train.checkpoint_every = 10**9
    config.train.eval_every = 0
    rates = []

    def log(line):
        # "step N/M | ... | R ex/s | ..." once after warmup and once at the end.
        if line.startswith("step ") and " ex/s" in line:
            rates.append(float(line.split(" ex/s")[0].split("|")[-1]))

    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        loop.train(task, workdir, log=log)
        wall = time.perf_counter() - start
    timed = rates[1:]  # the first interval holds tracing and autotune
    if not timed:
        raise RuntimeError("train_bench: the loop logged no throughput after the warmup")
    # Equal-length intervals: overall examples/s is the harmonic mean of interval rates.
    return len(timed) / sum(1.0 / r for r in timed), wall


def _train_flops_per_example(task, batch_size: int) -> float:
    """`TRAIN_STEP_FACTOR` x the forward FLOPs of `task.compute_losses` on one batch of the
    task's input, per example."""
    import tensorflow as tf

    from sketch_tf.models.flops import TRAIN_STEP_FACTOR, count_flops
    from sketch_tf.train.tasks import LossContext

    models = task.build_models()
    batch = next(iter(task.build_train_dataset(batch_size, 0, models=models)))
    ctx = LossContext(global_batch_size=batch_size, num_replicas=1)
    specs = tf.nest.map_structure(tf.TensorSpec.from_tensor, batch)
    forward = count_flops(lambda b: task.compute_losses(models, b, ctx)["total"], specs)
    return TRAIN_STEP_FACTOR * forward / batch_size


def main(argv):
    cli.check_args(argv)
    if _CONFIG.value is None:
        cli.fail("--config is required, e.g. --config=configs/zs_sbir.py:synthetic")
    if _STEPS.value <= 0 or _WARMUP.value < 1 or _STEPS.value % _WARMUP.value:
        cli.fail("--steps must be a positive multiple of --warmup (>= 1)")
    config = _CONFIG.value
    if _BATCH.value:
        config.train.batch_size = _BATCH.value
    config = cli.validated_config(config, None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from sketch_tf.families import get_task_class

    task_cls = get_task_class(config.task)
    if "synthetic" in config.data and not os.path.isdir(config.data.root):
        from sketch_tf.data.synthetic.prepare import prepare_synthetic

        prepare_synthetic(config.task, config.data.root, **config.data.synthetic.to_dict())

    from sketch_tf.core import kernels

    task = task_cls(config)
    # The input with each kernel path (`sketch_tf.core.kernels`), then with the per-machine
    # choice for the kernels it used when that mixes the two (a pure choice is one of them).
    rates, walls = {}, {}
    for path in ("xla", "tf"):
        with kernels.override(path):
            rates[path], walls[path] = _measure(task, config, _STEPS.value, _WARMUP.value)
    with kernels.override("auto"):
        chosen = {name: kernels.choose(k, size) for name, (k, size) in kernels.used().items()}
    path = next(iter(set(chosen.values()))) if len(set(chosen.values())) == 1 else "auto"
    if path == "auto":
        with kernels.override("auto"):
            rates[path], walls[path] = _measure(task, config, _STEPS.value, _WARMUP.value)
    pipeline_rate, pipeline_wall = rates[path], sum(walls.values())

    class InMemory(task_cls):
        """Same task; the dataset repeats one batch already held as tensors."""

        def build_train_dataset(self, global_batch_size, seed, models=None):
            batch = next(iter(task_cls.build_train_dataset(self, global_batch_size, seed, models)))
            batch = tf.nest.map_structure(tf.identity, batch)  # materialised tensors
            return tf.data.Dataset.from_tensors(batch).repeat()

    memory_rate, memory_wall = _measure(InMemory(config), config, _STEPS.value, _WARMUP.value)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    batch_size = int(config.train.batch_size)
    flops = _train_flops_per_example(task, batch_size)
    machine = machine_figures()
    print(
        json.dumps(
            {
                **machine,
                "train_flops_per_example": round(flops),
                **{
                    f"{name}_fraction_of_matmul": fraction_of_matmul(
                        rate * flops, machine["matmul_gflops"]
                    )
                    for name, rate in (("pipeline", pipeline_rate), ("in_memory", memory_rate))
                },
                "task": config.task,
                "backbone": config.model.get("backbone", None),
                "batch_size": int(config.train.batch_size),
                "steps": _STEPS.value,
                "pipeline_examples_per_s": round(pipeline_rate, 2),
                "pipeline_examples_per_s_xla": round(rates["xla"], 2),
                "pipeline_examples_per_s_tf": round(rates["tf"], 2),
                "chosen": "mixed" if path == "auto" else path,
                "chosen_kernels": chosen,
                "ratio_chosen_vs_other": round(
                    pipeline_rate / max(r for p, r in rates.items() if p not in (path, "auto")), 3
                ),
                "in_memory_examples_per_s": round(memory_rate, 2),
                "ratio_vs_in_memory": round(pipeline_rate / memory_rate, 3),
                "wall_s": round(pipeline_wall + memory_wall, 1),
                # The process's CPU time in the kernel: a third of the main job's on one AVX2
                # machine (issue 14), about 3 % here; this tells on any machine.
                "sys_fraction_of_cpu_time": round(
                    usage.ru_stime / max(usage.ru_utime + usage.ru_stime, 1e-9), 3
                ),
                "cpu": cpu_description(),
            }
        )
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
