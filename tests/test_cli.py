"""The absl scripts: config typos and bad values fail with exit 2 and write nothing; a tiny
run goes through train.py, evaluate.py and export.py end to end."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from sketch_tf.paths import PROJECT_ROOT
from tests.conftest import requires_hed

TINY = "tests/fixtures/tiny_config.py"


def _run(script, *args, timeout=180):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_config_key_typo_names_the_key(tmp_path):
    workdir = tmp_path / "run"
    proc = _run(
        "train.py", f"--config={TINY}", "--config.train.batch_sise=4", f"--workdir={workdir}"
    )
    assert proc.returncode == 2, proc.stderr
    assert "batch_sise" in proc.stderr
    assert not workdir.exists()


def test_bad_values_are_reported_together_and_nothing_is_written(tmp_path):
    workdir = tmp_path / "run"
    proc = _run(
        "train.py",
        f"--config={TINY}",
        "--config.train.batch_size=-3",
        "--config.model.dropout=1.5",
        "--config.train.optimizer=adagrad",
        f"--workdir={workdir}",
    )
    assert proc.returncode == 2, proc.stderr
    for expected in ("train.batch_size", "model.dropout", "train.optimizer", "3 problem(s)"):
        assert expected in proc.stderr
    assert not workdir.exists()


def test_wrong_value_type_is_exit_2(tmp_path):
    proc = _run(
        "train.py",
        f"--config={TINY}",
        "--config.train.num_steps=many",
        f"--workdir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2
    assert "num_steps" in proc.stderr


def test_train_evaluate_export_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    proc = _run(
        "train.py",
        f"--config={TINY}",
        "--config.train.num_steps=4",
        f"--workdir={workdir}",
        "--strategy=default",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "completed at step 4" in proc.stdout
    assert "step 4/4" in proc.stderr  # console progress line (absl logs to stderr)
    # evaluate.py reads the run's config.json; the tiny task's module must be importable, so
    # pass the config file again.
    proc = _run(
        "evaluate.py", f"--config={TINY}", f"--workdir={workdir}", f"--output={tmp_path / 'm.json'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in proc.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["step"] == 4 and 0 <= metrics["scalars"]["accuracy"] <= 1
    # Versions default to the next free integer; an explicit existing one is refused.
    for version in ("1", "2"):
        proc = _run("export.py", f"--config={TINY}", f"--workdir={workdir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (workdir / "export" / version / "saved_model.pb").is_file()
    assert (workdir / "export" / "models.config").is_file()
    proc = _run("export.py", f"--config={TINY}", f"--workdir={workdir}", "--version=2")
    assert proc.returncode != 0 and "already exists" in proc.stderr
    # Generic ablations: an unknown name is exit 2 naming the known ones; a known one trains
    # into <workdir>/ablations/<name> and lands in the comparison table.
    proc = _run("evaluate.py", f"--config={TINY}", f"--workdir={workdir}", "--ablations=narrow")
    assert proc.returncode == 2 and "unknown ['narrow']" in proc.stderr
    assert "no_dropout" in proc.stderr
    proc = _run(
        "evaluate.py", f"--config={TINY}", f"--workdir={workdir}", "--ablations=no_dropout",
        "--config.train.num_steps=4",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ablation no_dropout" in proc.stdout
    assert (workdir / "ablations" / "no_dropout" / "ckpt" / "checkpoint").is_file()


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
    proc = _run("evaluate.py", f"--config={TINY}", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    assert "no checkpoint" in proc.stderr


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "export.py"])
def test_help_runs(script):
    proc = _run(script, "--help")
    assert proc.returncode in (0, 1)  # absl exits 1 after printing --help
    assert "--workdir" in proc.stdout


def test_sigterm_saves_a_checkpoint_and_exits_143_with_the_resume_command(tmp_path):
    import signal

    import tensorflow as tf

    workdir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    args = ["train.py", f"--config={TINY}", "--config.train.num_steps=1000000",
            "--config.train.checkpoint_every=1000000", f"--workdir={workdir}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in proc.stderr:  # progress lines (log_every=1) go to stderr
            if "step 3/1000000" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # 128 + SIGTERM, as if the signal had killed it: a scheduler sees an unfinished run.
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "completed" not in out
    match = re.search(rf"interrupted by SIGTERM: training of {re.escape(str(workdir))} "
                      r"stopped at step (\d+) ", err)  # fmt: skip
    assert match, err[-3000:]
    step = int(match.group(1))
    assert 3 <= step < 1000000
    assert tf.train.latest_checkpoint(str(workdir / "ckpt")).endswith(f"ckpt-{step}")
    # The resume command is this very command line.
    assert f"Resume with:\n  {shlex.join([sys.executable, *args])}" in err


@requires_hed
def test_prepare_data_derived_precomputes_the_feature_caches(tmp_path):
    from sketch_tf.data.synthetic.prepare import prepare_synthetic

    root = tmp_path / "records"
    prepare_synthetic("zs_sbir", root, image_size=32, n_per_category=2, test_fraction=0.5,
                      categories=["airplane", "bed", "bottle", "mug"])  # fmt: skip
    args = [
        "--derived", "--config=configs/zs_sbir.py:synthetic_smoke", f"--config.data.root={root}",
        "--config.data.unseen_classes=('bottle', 'mug')", "--config.model.freeze_trunk=True",
        "--config.data.feature_cache=True", "--config.data.train_augment=False",
    ]  # fmt: skip
    proc = _run("prepare_data.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    derived = json.loads(proc.stdout.strip().splitlines()[-1])["derived"]
    assert sorted(derived) == ["test/photo", "test/sketch", "train/photo", "train/sketch"]
    for path in derived.values():
        assert os.path.isfile(os.path.join(path, "features.npz"))
        assert os.path.dirname(os.path.dirname(path)).startswith(str(root))
    proc = _run("prepare_data.py", "--derived")
    assert proc.returncode == 2 and "--derived needs --config" in proc.stderr


def test_prepare_data_allow_missing_is_the_flag_the_error_suggests(tmp_path):
    from PIL import Image

    root = tmp_path / "pacs"
    for rel in ("photo/dog/a.png", "photo/cat/a.png", "sketch/dog/a.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "white").save(root / rel)
    args = ["--source=folders", f"--root={root}"]
    proc = _run("prepare_data.py", *args, f"--out={tmp_path / 'a'}")
    assert proc.returncode == 2 and "missing in domain 'sketch'" in proc.stderr
    assert "--allow_missing" in proc.stderr
    proc = _run("prepare_data.py", *args, f"--out={tmp_path / 'b'}", "--allow_missing")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["records"] == 3


def _records_with_a_corrupt_image(folder):
    """3 labelled records in one shard; record 1 (source b.png) holds PNG-signed garbage,
    which passes the writer's check but does not decode."""
    import numpy as np

    from sketch_tf.core.png import encode_png
    from sketch_tf.data import schema
    from sketch_tf.data.tfrecord import ShardedWriter

    good = encode_png(np.zeros((8, 8, 3), np.uint8))
    images = {"a.png": good, "b.png": b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8, "c.png": good}
    with ShardedWriter(folder, schema.KIND_LABELLED_IMAGE, classes=["cat"]) as writer:
        for name, image in images.items():
            record = schema.encode_labelled_image(image, 0, "cat", "sketch", source=name)
            writer.write(record, class_id=0, class_name="cat", domain="sketch")
    return folder


def test_prepare_data_verify_lists_corrupt_image_bytes_inside_a_shard(tmp_path):
    root = tmp_path / "records"
    _records_with_a_corrupt_image(root / "train")
    proc = _run("prepare_data.py", f"--verify={root}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    bad = [line for line in lines if line.startswith("record ")]
    print(bad)
    assert len(bad) == 1 and bad[0].startswith("record 1 of shard ")
    assert "(source b.png): feature image: not a decodable image" in bad[0]
    assert json.loads(lines[-1])["records"] == 3 and json.loads(lines[-1])["bad"] == 1
    assert "--skip_bad" in proc.stderr
