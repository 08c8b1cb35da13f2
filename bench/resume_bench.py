"""Time to the first training step after a resume, at an early and a late checkpoint.

    PYTHONPATH=. python bench/resume_bench.py --late_step 2000 --repeats 2

Renders a small zero-shot SBIR world (synthetic, `configs/zs_sbir.py:synthetic_smoke`: real
PNG decoding and augmentation in the `tf.data` pipeline), trains one run to
``--early_step`` and another to ``--late_step`` steps (checkpoints at those steps), then
resumes each for one step (best of ``--repeats``), in two modes: with the input position
saved in the checkpoint (the default, `train.save_input_position=True`) and replaying the
stream (`train.save_input_position=False`: the dataset skips the batches already consumed,
i.e. decodes and augments them again). The time is from the `loop.train` call to its first step's
progress line, in a new process as a rerun after a pre-emption (model build, restore, first
trace included: the same constant in every case).

``--replicas 2`` runs everything under MirroredStrategy over 2 logical CPU devices (the
global-batch iterator is saved and split per replica, as under several workers sharded by
data).

Keys of the JSON object on the last line: ``first_step_s_<mode>_<step>`` for mode ``saved``
and ``replay`` at both steps; ``growth_saved`` and ``growth_replay`` = time at the late step
/ time at the early step (1.0 = does not grow with the step; the target for ``saved``);
``ratio_vs_replay`` = replay / saved time at the late step (higher is better);
``checkpoint_mb_with_input`` / ``checkpoint_mb_without_input`` (one checkpoint's files);
``cpu``, ``cpu_model`` and ``matmul_gflops`` (`bench_args.machine_figures`).
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_args import cpu_description, int_flags, machine_figures  # noqa: E402


def _checkpoint_mb(ckpt_dir: str, step: int) -> float:
    files = glob.glob(os.path.join(ckpt_dir, f"ckpt-{step}.*"))
    return round(sum(os.path.getsize(f) for f in files) / 2**20, 3)


def _strategy(replicas: int):
    """The default strategy, or MirroredStrategy over `replicas` logical CPUs (configured
    here, before any op)."""
    import tensorflow as tf

    if replicas == 1:
        return tf.distribute.get_strategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
    )
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")[:replicas]]
    )


def _resume_in_a_new_process(workdir: str, step: int, save: bool, replicas: int) -> float:
    """Seconds from `loop.train` to its first step when a new process resumes `workdir`
    (as a rerun after a pre-emption does) for one step; the checkpoint is put back after."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", workdir, str(step), str(int(save)), str(replicas)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for f in glob.glob(os.path.join(workdir, "ckpt", f"ckpt-{step + 1}.*")):
        os.remove(f)
    with open(os.path.join(workdir, "ckpt", "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "ckpt-{step}"\n')
    return float(out.strip().splitlines()[-1])


def _child(workdir: str, step: int, save: bool, replicas: int) -> None:
    strategy = _strategy(replicas)
    from sketch_tf.families.zs_sbir.task import ZsSbirTask
    from sketch_tf.train import loop
    from sketch_tf.train.run import read_config

    config = read_config(workdir)
    config.train.num_steps = step + 1
    config.train.save_input_position = save
    first = []

    def log(line):
        if line.startswith(f"step {step + 1}/") and not first:
            first.append(time.perf_counter())

    t = time.perf_counter()
    loop.train(ZsSbirTask(config), workdir, strategy, log=log)
    print(first[0] - t)


def main():
    args = int_flags(
        __doc__.splitlines()[0], early_step=10, late_step=2000, batch_size=8, repeats=2,
        replicas=1,
    )  # fmt: skip
    strategy = _strategy(args.replicas)
    from sketch_tf.data.synthetic import prepare_synthetic
    from sketch_tf.families.zs_sbir.task import ZsSbirTask
    from sketch_tf.train import loop
    from sketch_tf.train.config import load_project_config

    tmp = tempfile.mkdtemp(prefix="resume_bench_")
    config = load_project_config("zs_sbir", "synthetic_smoke")
    config.data.root = os.path.join(tmp, "records")
    prepare_synthetic("zs_sbir", config.data.root, **config.data.synthetic.to_dict())
    config.train.update(batch_size=args.batch_size, log_every=1, eval_every=0)
    figures = {"early_step": args.early_step, "late_step": args.late_step,
               "replicas": args.replicas}  # fmt: skip
    for step in (args.early_step, args.late_step):
        workdir = os.path.join(tmp, f"run_{step}")
        config.train.num_steps = step
        config.train.checkpoint_every = step
        t = time.perf_counter()
        loop.train(ZsSbirTask(config), workdir, strategy, log=lambda s: None)
        print(f"trained to step {step} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        if step == args.early_step:
            figures["checkpoint_mb_with_input"] = _checkpoint_mb(
                os.path.join(workdir, "ckpt"), step
            )
        for mode, save in (("saved", True), ("replay", False)) * args.repeats:
            key = f"first_step_s_{mode}_{step}"
            seconds = _resume_in_a_new_process(workdir, step, save, args.replicas)
            figures[key] = round(min(figures.get(key, float("inf")), seconds), 3)
    # A checkpoint of the same run without the input position, for its size.
    nosave = config.copy_and_resolve_references()
    nosave.train.update(num_steps=args.early_step, checkpoint_every=args.early_step,
                        save_input_position=False)  # fmt: skip
    workdir = os.path.join(tmp, "run_without_input")
    loop.train(ZsSbirTask(nosave), workdir, strategy, log=lambda s: None)
    figures["checkpoint_mb_without_input"] = _checkpoint_mb(
        os.path.join(workdir, "ckpt"), args.early_step
    )
    e, late = args.early_step, args.late_step
    figures["growth_saved"] = round(figures[f"first_step_s_saved_{late}"]
                                    / figures[f"first_step_s_saved_{e}"], 3)  # fmt: skip
    figures["growth_replay"] = round(figures[f"first_step_s_replay_{late}"]
                                     / figures[f"first_step_s_replay_{e}"], 3)  # fmt: skip
    figures["ratio_vs_replay"] = round(figures[f"first_step_s_replay_{late}"]
                                       / figures[f"first_step_s_saved_{late}"], 3)  # fmt: skip
    figures["cpu"] = cpu_description()
    figures.update(machine_figures())
    print(json.dumps(figures))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])), int(sys.argv[5]))
    else:
        main()
