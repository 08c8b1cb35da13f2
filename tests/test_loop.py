"""The training loop: resume, MirroredStrategy parity, TensorBoard scalars, non-finite loss."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.train import loop
from tests import tiny_task


def _config(**train):
    config = tiny_task.get_config()
    config.train.update(train)
    return config


def _read_scalars(event_dir):
    """tag -> {step: value} from the TF2 summary event files in `event_dir`."""
    out = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim == 0:  # scalars only (images are string tensors)
                    out.setdefault(value.tag, {})[event.step] = float(array)
    return out


def _final_weights(workdir, config):
    task = tiny_task.TinyTask(config)
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    return [v.numpy() for v in state.checkpoint.model_variables], int(state.step.numpy())


def test_resume_matches_uninterrupted_run(tmp_path):
    config = _config(num_steps=6)
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    result = loop.train(tiny_task.TinyTask(config), full, log=lambda s: None)
    assert result.status == "completed" and result.step == 6

    first = loop.train(tiny_task.TinyTask(config), split, stop_after_steps=3, log=lambda s: None)
    assert first.status == "interrupted" and first.step == 3
    logs = []
    second = loop.train(tiny_task.TinyTask(config), split, log=logs.append)
    assert second.step == 6 and any("resumed from" in line and "at step 3" in line for line in logs)

    w_full, step_full = _final_weights(full, config)
    w_split, step_split = _final_weights(split, config)
    assert step_full == step_split == 6
    for a, b in zip(w_full, w_split, strict=True):
        np.testing.assert_array_equal(a, b)
    # The second half's losses equal the uninterrupted run's losses at the same steps.
    s_full = _read_scalars(os.path.join(full, "train"))["loss/total"]
    s_split = _read_scalars(os.path.join(split, "train"))["loss/total"]
    for step in (4, 5, 6):
        assert s_full[step] == pytest.approx(s_split[step], rel=1e-6, abs=1e-7)
    # Training past the end is a no-op.
    again = loop.train(tiny_task.TinyTask(config), split, log=lambda s: None)
    assert again.step == 6


def test_init_fn_runs_only_when_the_run_starts_from_scratch(tmp_path):
    config = _config(num_steps=4)
    workdir = str(tmp_path / "run")
    calls = []

    def init_fn(state):
        # Called before any step, on the models the loop trains.
        assert int(state.step.numpy()) == 0 and set(state.models) == {"trunk", "head"}
        calls.append(len(state.variables))

    task = tiny_task.TinyTask(config)
    loop.train(task, workdir, init_fn=init_fn, stop_after_steps=2, log=lambda s: None)
    assert len(calls) == 1
    loop.train(tiny_task.TinyTask(config), workdir, init_fn=init_fn, log=lambda s: None)
    assert len(calls) == 1  # the resume restores the checkpoint instead


@pytest.mark.parametrize("batchnorm", [False, True])
def test_mirrored_two_cpus_matches_default_strategy(tmp_path, two_cpu_strategy, batchnorm):
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest must split the CPU into 2 logical devices"
    config = _config(num_steps=5)
    # Dropout draws different masks per replica, so compare without it.
    config.model.dropout = 0.0
    config.model.batchnorm = batchnorm
    default_dir, mirrored_dir = str(tmp_path / "default"), str(tmp_path / "mirrored")
    loop.train(tiny_task.TinyTask(config), default_dir, log=lambda s: None)
    mirrored = two_cpu_strategy
    loop.train(tiny_task.TinyTask(config), mirrored_dir, mirrored, log=lambda s: None)
    a = _read_scalars(os.path.join(default_dir, "train"))
    b = _read_scalars(os.path.join(mirrored_dir, "train"))
    for tag in ("loss/total", "loss/ce", "loss/pull"):
        for step in range(1, 6):
            # float32 sums in a different order across replicas: 1e-5 relative.
            assert b[tag][step] == pytest.approx(a[tag][step], rel=1e-5, abs=1e-6), (tag, step)
    if batchnorm:
        # Per-replica BatchNorm statistics (train.sync_batch_norm=False) give other losses:
        # the synchronisation is what makes the two runs agree.
        config.train.sync_batch_norm = False
        unsynced_dir = str(tmp_path / "unsynced")
        loop.train(tiny_task.TinyTask(config), unsynced_dir, mirrored, log=lambda s: None)
        c = _read_scalars(os.path.join(unsynced_dir, "train"))
        gap = abs(c["loss/total"][1] - a["loss/total"][1]) / abs(a["loss/total"][1])
        print(f"BatchNorm without synchronisation: step-1 loss {gap:.1%} off one replica's")
        assert gap > 1e-3


def test_tensorboard_scalars_and_eval_results(tmp_path):
    config = _config(num_steps=4, log_every=2, eval_every=2)
    workdir = str(tmp_path / "run")
    loop.train(tiny_task.TinyTask(config), workdir, log=lambda s: None)
    scalars = _read_scalars(os.path.join(workdir, "train"))
    for tag in (
        "loss/total",
        "loss/ce",
        "loss/pull",
        "learning_rate",
        "examples_per_s",
        "schedule/ramp",
    ):
        assert set(scalars[tag]) == {2, 4}, tag
    assert scalars["learning_rate"][2] == pytest.approx(0.05)
    assert scalars["schedule/ramp"][4] == pytest.approx(0.75)  # value set before step 4 (3/4)
    assert scalars["examples_per_s"][4] > 0
    evals = _read_scalars(os.path.join(workdir, "eval"))
    assert 0.0 <= evals["accuracy"][2] <= 1.0
    assert os.path.isfile(os.path.join(workdir, "eval", "metrics_2.json"))
    assert os.path.isfile(os.path.join(workdir, "config.json"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = _config(num_steps=10, checkpoint_every=2)
    config.model.poison_after = 3  # batches 3, 4, ... give an infinite loss (step 4 on)
    workdir = str(tmp_path / "run")
    with pytest.raises(loop.NonFiniteLossError, match=r"step 4.*ckpt-2"):
        loop.train(tiny_task.TinyTask(config), workdir, log=lambda s: None)
    assert tf.train.latest_checkpoint(os.path.join(workdir, "ckpt")).endswith("ckpt-2")


def test_checkpoint_from_other_model_is_a_clear_error(tmp_path):
    config = _config(num_steps=2)
    workdir = str(tmp_path / "run")
    loop.train(tiny_task.TinyTask(config), workdir, log=lambda s: None)
    other = _config(num_steps=4)
    other.model.hidden = 7
    with pytest.raises(ValueError, match="does not match the models"):
        loop.train(tiny_task.TinyTask(other), workdir, log=lambda s: None)


def test_sigkill_at_a_random_step_resumes_bit_identically(tmp_path):
    # Pre-emption: train.py killed with SIGKILL at a random step (not at a checkpoint), then
    # the same command again. The rerun resumes from the last checkpoint (at most one
    # interval lost) with the saved input position, and ends with the weights of an
    # uninterrupted run, bit for bit.
    import random
    import re
    import signal
    import subprocess
    import sys

    from sketch_tf.paths import PROJECT_ROOT

    steps, every = 1200, 100
    overrides = {"num_steps": steps, "checkpoint_every": every, "log_every": 1}
    kill_at = random.Random().choice([s for s in range(every + 1, steps - every) if s % every])
    workdir = tmp_path / "killed"
    cmd = [sys.executable, "train.py", "--config=tests/fixtures/tiny_config.py",
           f"--workdir={workdir}", "--strategy=default",
           *(f"--config.train.{k}={v}" for k, v in overrides.items())]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stderr:
        match = re.search(rf"step (\d+)/{steps}", line)
        if match:
            seen = int(match.group(1))
            if seen >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and kill_at <= seen < steps, (seen, kill_at)
    rerun = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", rerun.stderr).group(1))
    assert seen - every <= resumed <= seen and resumed % every == 0, (seen, resumed)
    assert "input position restored" in rerun.stderr
    print(f"killed at step {seen} (target {kill_at}), resumed at {resumed}")

    config = _config(**overrides)
    loop.train(tiny_task.TinyTask(config), str(tmp_path / "full"), log=lambda s: None)
    w_full, step_full = _final_weights(str(tmp_path / "full"), config)
    w_killed, step_killed = _final_weights(str(workdir), config)
    assert step_full == step_killed == steps
    for a, b in zip(w_full, w_killed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_reads_the_input_position_or_replays(tmp_path):
    # A checkpoint with the input position resumes the iterator; without it (an older run,
    # or train.save_input_position=False) the stream is replayed; both give the same weights.
    results = {}
    for save in (True, False):
        config = _config(num_steps=8, save_input_position=save)
        workdir = str(tmp_path / f"save_{save}")
        loop.train(tiny_task.TinyTask(config), workdir, stop_after_steps=5, log=lambda s: None)
        logs = []
        loop.train(tiny_task.TinyTask(config), workdir, log=logs.append)
        expected = "input position restored" if save else "replaying the 5 batches"
        assert any(expected in line for line in logs), logs
        results[save] = _final_weights(workdir, config)[0]
        names = {n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(
            os.path.join(workdir, "ckpt")))}  # fmt: skip
        assert any(n.startswith("input_iterator/") for n in names) == save
    for a, b in zip(results[True], results[False], strict=True):
        np.testing.assert_array_equal(a, b)


def test_mirrored_resume_reads_the_input_position(tmp_path, two_cpu_strategy):
    # Two replicas take their rows of one global-batch iterator, which the checkpoint saves:
    # a resume under MirroredStrategy restores the position (nothing replayed) and ends with
    # the weights of an uninterrupted run on the same strategy.
    config = _config(num_steps=8)
    config.model.dropout = 0.0
    split, full = str(tmp_path / "split"), str(tmp_path / "full")
    loop.train(tiny_task.TinyTask(config), split, two_cpu_strategy, stop_after_steps=5,
               log=lambda s: None)  # fmt: skip
    logs = []
    loop.train(tiny_task.TinyTask(config), split, two_cpu_strategy, log=logs.append)
    assert any("input position restored" in line for line in logs), logs
    assert not any("replaying" in line for line in logs), logs
    loop.train(tiny_task.TinyTask(config), full, two_cpu_strategy, log=lambda s: None)
    for a, b in zip(_final_weights(split, config)[0], _final_weights(full, config)[0],
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sigkill_while_checkpoints_are_written_leaves_the_last_complete_one(tmp_path):
    # A checkpoint every step, so that kills land while one is being written (seen as its
    # partial files left behind): after every kill the latest checkpoint still loads, and
    # the rerun resumes from it; the partial files of the dead save are not used.
    import signal
    import subprocess
    import sys
    import time

    from sketch_tf.paths import PROJECT_ROOT

    workdir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--config=tests/fixtures/tiny_config.py",
           f"--workdir={workdir}", "--strategy=default", "--config.train.num_steps=100000",
           "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2"]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    mid_write, steps = 0, [0]
    ckpt = workdir / "ckpt"

    def newest() -> int:
        found = [int(p.split("-")[1].split(".")[0]) for p in glob.glob1(str(ckpt), "ckpt-*.index")]
        return max(found, default=0)

    for _ in range(4):
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stderr=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline and newest() <= steps[-1] + 2:  # training again
            time.sleep(0.02)
        # Kill as soon as a save is seen in progress (its temporary files exist).
        deadline = time.time() + 10
        while time.time() < deadline and not [p for p in os.listdir(ckpt) if "_temp" in p]:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        mid_write += bool([p for p in os.listdir(ckpt) if "_temp" in p])
        state = loop.build_state(tiny_task.TinyTask(tiny_task.get_config()))
        latest = loop.restore_latest(state, str(ckpt), for_training=True)
        assert latest is not None
        steps.append(int(state.step.numpy()))
    steps = steps[1:]
    # Every rerun resumed and went on; the kills that caught a save did not break the last one.
    assert steps == sorted(set(steps)) and steps[0] > 0 and mid_write >= 1, (steps, mid_write)
    print(f"4 kills, {mid_write} during a checkpoint write; checkpoints loaded at {steps}")


def test_input_sharding_choice():
    # auto: by file with at least one shard per worker and a plain record stream, else by
    # data; "file" where it cannot work is an error naming the fix.
    from types import SimpleNamespace

    class Resolver:
        task_type, task_id = "worker", 0

        def __init__(self, workers):
            self.workers = workers

        def cluster_spec(self):
            spec = {"worker": [f"127.0.0.1:{i}" for i in range(self.workers)]}
            return SimpleNamespace(as_dict=lambda: spec, jobs=list(spec))

    def strategy(workers):
        return SimpleNamespace(cluster_resolver=Resolver(workers), num_replicas_in_sync=workers)

    def task(shards):
        config = tiny_task.get_config()
        config.data.shards = shards
        return tiny_task.TinyTask(config)

    choose = loop.choose_input_sharding
    assert choose(task(8), tf.distribute.get_strategy()) == ("data", "one worker")
    assert choose(task(8), strategy(2)) == ("file", "8 training shards over 2 workers")
    assert choose(task(8), strategy(2), "data")[0] == "data"
    assert choose(task(3), strategy(4)) == ("data", "3 training shard(s) for 4 workers")
    assert choose(task(0), strategy(2))[0] == "data"  # a sampled input
    with pytest.raises(ValueError, match="--shard_mb"):
        choose(task(3), strategy(4), "file")
    with pytest.raises(ValueError, match="samples from every class"):
        choose(task(0), strategy(2), "file")


def test_input_that_fails_is_a_clear_error_naming_the_verify_command(tmp_path):
    # An image that does not decode fails inside the decoder, after sampling, where TF cannot
    # say which record it was: the error says so and names the command that lists it.
    from sketch_tf.data import pipeline

    class BadImageTask(tiny_task.TinyTask):
        def build_train_dataset(self, global_batch_size, seed, models=None):
            good = tiny_task.TinyTask.build_train_dataset(self, global_batch_size, seed)
            corrupt = tf.constant(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
            return good.map(lambda b: {**b, "x": b["x"] + 0 * tf.reduce_sum(
                pipeline.decode_image(corrupt))})  # fmt: skip

    config = _config(num_steps=3)
    config.data.root = str(tmp_path / "records")
    with pytest.raises(loop.InputError, match=r"failed before step 1: .*--verify=.*records"):
        loop.train(BadImageTask(config), str(tmp_path / "run"), log=lambda s: None)
