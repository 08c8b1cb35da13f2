"""MultiWorkerMirroredStrategy: two local worker processes on 127.0.0.1 train the tiny task
through train.py and log the same losses as a default-strategy run on the same data; only
the chief evaluates and writes evaluation files."""

import json
import os
import socket
import subprocess
import sys

import pytest

from sketch_tf.paths import PROJECT_ROOT
from tests.test_loop import _read_scalars

TINY = "tests/fixtures/tiny_config.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_match_default_strategy(tmp_path):
    base_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    args = [
        sys.executable, "train.py", f"--config={TINY}", "--config.model.dropout=0.0",
        "--config.train.eval_every=3",
    ]  # fmt: skip
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    procs = []
    for index in range(2):
        env = dict(
            base_env,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        procs.append(
            subprocess.Popen(
                [*args, f"--workdir={tmp_path / 'mw'}", "--strategy=multi_worker"],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    default = subprocess.run(
        [*args, f"--workdir={tmp_path / 'default'}", "--strategy=default"],
        cwd=PROJECT_ROOT,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert default.returncode == 0, default.stderr[-3000:]
    # Only the chief (worker 0) writes the checkpoint and summaries; worker 1's scratch is gone.
    assert (tmp_path / "mw" / "ckpt" / "ckpt-6.index").is_file()
    assert not (tmp_path / "mw" / ".scratch" / "worker_1").exists()
    # Evaluation at step 3 ran on the chief only: one picture, one metrics file.
    eval_files = sorted(os.listdir(tmp_path / "mw" / "eval"))
    assert [f for f in eval_files if f.startswith("picture_")] == [f"picture_{procs[0].pid}.txt"]
    assert "metrics_3.json" in eval_files
    mw = _read_scalars(str(tmp_path / "mw" / "train"))["loss/total"]
    ref = _read_scalars(str(tmp_path / "default" / "train"))["loss/total"]
    assert sorted(mw) == sorted(ref) == list(range(1, 7))
    for step in ref:
        assert mw[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
