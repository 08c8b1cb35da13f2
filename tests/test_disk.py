"""Disk trouble: a workdir that cannot be written, a disk that fills up during a checkpoint or
an export. Each gives a clear error, and the previous checkpoint / export version still loads.

The full disk is a small tmpfs mounted inside the test (needs root, as on the project's
machines; skipped with the reason otherwise)."""

import contextlib
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from sketch_tf.paths import PROJECT_ROOT
from sketch_tf.train import loop
from tests import tiny_task

TINY = "tests/fixtures/tiny_config.py"


def _run(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, script, *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


@contextlib.contextmanager
def _small_disk(path, kib: int):
    """A `kib` KiB tmpfs mounted at `path` for the block (skips the test when not allowed)."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_workdir_that_is_not_a_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = _run("train.py", f"--config={TINY}", f"--workdir={blocker / 'run'}",
                "--config.train.num_steps=2")  # fmt: skip
    assert proc.returncode == 1
    assert f"workdir {blocker / 'run'} is not writable" in proc.stderr, proc.stderr[-2000:]


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    # A tiny run's checkpoint is ~80 KB: 256 KiB hold the config, the summaries and about
    # three of them; the next one fails to write.
    with _small_disk(tmp_path / "disk", 256) as disk:
        workdir = disk / "run"
        proc = _run("train.py", f"--config={TINY}", f"--workdir={workdir}",
                    "--config.train.num_steps=20", "--config.train.checkpoint_every=1",
                    "--config.train.keep_checkpoints=20")  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "could not write checkpoint" in proc.stderr, proc.stderr[-3000:]
        assert "is intact and a rerun resumes from it" in proc.stderr
        latest = tf.train.latest_checkpoint(str(workdir / "ckpt"))
        assert latest is not None and latest in proc.stderr
        state = loop.build_state(tiny_task.TinyTask(tiny_task.get_config()))
        assert loop.restore_latest(state, str(workdir / "ckpt"), for_training=True) == latest
        step = int(state.step.numpy())
        assert 0 < step < 20
        print(f"disk full after step {step}: checkpoint {latest} loads")


def test_disk_full_during_an_export_keeps_the_previous_version(tmp_path):
    workdir = tmp_path / "run"
    proc = _run("train.py", f"--config={TINY}", f"--workdir={workdir}",
                "--config.train.num_steps=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with _small_disk(tmp_path / "disk", 72) as disk:  # one ~45 KB version fits
        base = disk / "tiny"
        versions = []
        for _ in range(4):  # until the disk is full
            proc = _run("export.py", f"--config={TINY}", f"--workdir={workdir}",
                        f"--export_dir={base}")  # fmt: skip
            if proc.returncode != 0:
                break
            versions.append(sorted(int(n) for n in os.listdir(base) if n.isdigit())[-1])
        assert proc.returncode == 2 and "disk full?" in proc.stderr, proc.stderr[-3000:]
        assert "the other versions are untouched" in proc.stderr
        assert versions, "not even one version fitted: make the disk larger"
        # No partial version and no temporary folder left; the last good version loads.
        left = sorted(os.listdir(base))
        assert sorted(int(n) for n in left if n.isdigit()) == versions, left
        assert not [n for n in left if n.startswith(".tmp-")], left
        loaded = tf.saved_model.load(str(base / str(versions[-1])))
        assert "serving_default" in loaded.signatures
        print(f"disk full at version {versions[-1] + 1}: versions {versions} intact")
