"""sketch_tf.train.run: loading a run, multi-stage recipes (warm start, frozen models, resume
inside a stage), init errors, and generic ablations, on the tiny task."""

import os

import numpy as np
import pytest

from sketch_tf.train import loop
from sketch_tf.train import run as run_lib
from sketch_tf.train.config import ConfigError, validate_config
from tests import tiny_task


def _two_stage_config():
    config = tiny_task.get_config()
    config.model.batchnorm = True  # frozen BatchNorm statistics must stay put too
    config.stage_order = ("pre", "fine")
    config.stages.pre = {"train": {"num_steps": 3}}
    # Stage 2: only the head trains; the trunk (incl. its BN statistics) is frozen.
    config.stages.fine = {"train": {"num_steps": 6, "trainable": ("head",)}}
    validate_config(config)
    return config


def _weights(model):
    return [np.array(w) for w in model.weights]


def _stage_models(workdir, stage):
    return run_lib.load_run(os.path.join(workdir, stage)).models


def test_two_stage_recipe_init_freeze_and_resume(tmp_path):
    config = _two_stage_config()
    workdir = str(tmp_path / "staged")
    logs = []
    # Stage 1 runs its 3 steps; stage 2 is interrupted after 3 of its 6 (with a checkpoint).
    first = run_lib.train_run(config, workdir, stop_after_steps=3, log=logs.append)
    assert first.status == "interrupted" and first.step == 3
    assert os.path.isfile(os.path.join(workdir, "config.json"))  # the whole recipe
    pre = _stage_models(workdir, "pre")
    assert any("initialised ['head', 'trunk'] from" in line for line in logs)

    # Stage 2 started from stage 1's weights: before its first step they are equal.
    _, fine_config, fine_dir = run_lib.stage_configs(config, workdir)[1]
    assert fine_config.init.workdir == os.path.join(workdir, "pre")
    fresh = loop.build_state(tiny_task.TinyTask(fine_config))
    run_lib.apply_init(fresh, fine_config.init, log=lambda s: None)
    for name in ("trunk", "head"):
        for a, b in zip(_weights(pre[name]), _weights(fresh.models[name]), strict=True):
            np.testing.assert_array_equal(a, b)

    # Rerun: stage 1 is not rerun, stage 2 resumes at step 3 and finishes.
    logs = []
    second = run_lib.train_run(config, workdir, log=logs.append)
    assert second.status == "completed" and second.step == 6
    assert any("stage 'pre' already finished" in line for line in logs)
    assert not any("stage 'pre' ->" in line for line in logs)
    assert any("resumed from" in line and "at step 3" in line for line in logs)

    final = run_lib.load_run(workdir)  # the top folder loads the last stage
    assert final.workdir == fine_dir and final.step == 6
    # The frozen trunk is bit-identical to stage 1's (weights and BN moving statistics) ...
    for a, b in zip(_weights(pre["trunk"]), _weights(final.models["trunk"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # ... while the head trained.
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(_weights(pre["head"]), _weights(final.models["head"]), strict=True)
    ]
    assert any(moved)

    # The interrupted recipe ends exactly where an uninterrupted one does.
    straight = str(tmp_path / "straight")
    run_lib.train_run(config, straight, log=lambda s: None)
    other = run_lib.load_run(straight)
    for name in ("trunk", "head"):
        for a, b in zip(_weights(other.models[name]), _weights(final.models[name]), strict=True):
            np.testing.assert_array_equal(a, b)


def test_init_shape_mismatch_names_model_and_variable(tmp_path):
    source = tiny_task.get_config()
    source.train.num_steps = 1
    src_dir = str(tmp_path / "src")
    run_lib.train_run(source, src_dir, log=lambda s: None)
    target = tiny_task.get_config()
    target.model.hidden = 12
    target.init.workdir = src_dir
    target.init.models = ("trunk",)
    with pytest.raises(ValueError, match=r"init: model 'trunk' variable .* has shape \(8, 12\)"):
        run_lib.train_run(target, str(tmp_path / "dst"), log=lambda s: None)
    target.init.models = ("nope",)
    with pytest.raises(ValueError, match="init.models: 'nope' is not a model of this run"):
        run_lib.train_run(target, str(tmp_path / "dst2"), log=lambda s: None)
    # The loop loads no other run: it refuses a warm start it is not given the function of.
    with pytest.raises(ValueError, match="init.workdir=.* is set but loop.train got no init_fn"):
        loop.train(tiny_task.TinyTask(target), str(tmp_path / "dst3"), log=lambda s: None)


def test_recipe_sections_are_validated():
    config = _two_stage_config()
    config.stage_order = ("pre",)
    with pytest.raises(ConfigError, match="must name the same stages"):
        validate_config(config)
    config = _two_stage_config()
    config.stages.fine = {"train": {"num_stepz": 6}}
    with pytest.raises(ConfigError, match=r"stages.fine.train.num_stepz: no such key"):
        validate_config(config)
    config = tiny_task.get_config()
    config.init.models = ("head",)
    with pytest.raises(ConfigError, match="needs init.workdir"):
        validate_config(config)


def test_ablations_train_and_compare(tmp_path):
    config = tiny_task.get_config()
    config.train.num_steps = 2
    config.ablations.wide = {"model": {"hidden": 32}}
    workdir = str(tmp_path / "main")
    run_lib.train_run(config, workdir, log=lambda s: None)
    run = run_lib.load_run(workdir)
    result = run.task.evaluate(run.models)
    run_lib.run_ablations(config, workdir, result, ["wide"], log=lambda s: None)
    assert os.path.isdir(os.path.join(workdir, "ablations", "wide", "ckpt"))
    ablated = run_lib.load_run(os.path.join(workdir, "ablations", "wide"))
    assert ablated.config.model.hidden == 32
    table = result["tables"]["ablations (same data, same evaluation)"]
    assert [row[0] for row in table["rows"]] == ["model", "ablation wide"]
    with pytest.raises(ValueError, match=r"unknown \['narrow'\]"):
        run_lib.run_ablations(config, workdir, result, ["narrow"])


def test_load_run_names_missing_checkpoint(tmp_path):
    config = tiny_task.get_config()
    loop.write_config(config, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*train first"):
        run_lib.load_run(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        run_lib.load_run(str(tmp_path / "nothing"))


def test_sigkill_at_the_stage_handover_resumes_bit_identically(tmp_path):
    # train.py of a two-stage recipe killed the moment the second stage starts (its init
    # from the first applied in memory, nothing of it saved): the rerun does not redo stage
    # one, starts stage two again from it, and ends bit-identical to an uninterrupted run.
    import signal
    import subprocess
    import sys

    from sketch_tf.paths import PROJECT_ROOT
    from tests.fixtures import tiny_two_stage_config

    workdir = tmp_path / "killed"
    cmd = [sys.executable, "train.py", "--config=tests/fixtures/tiny_two_stage_config.py",
           f"--workdir={workdir}", "--strategy=default"]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "stage 'fine' ->" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(workdir / "fine" / "ckpt" / "checkpoint")  # killed before any
    rerun = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "stage 'pre' already finished" in rerun.stderr
    config = tiny_two_stage_config.get_config()
    run_lib.train_run(config, str(tmp_path / "full"), log=lambda s: None)
    for stage in ("pre", "fine"):
        killed = _stage_models(str(workdir), stage)
        full = _stage_models(str(tmp_path / "full"), stage)
        for name in full:
            for a, b in zip(_weights(killed[name]), _weights(full[name]), strict=True):
                np.testing.assert_array_equal(a, b)
