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


def _start_cluster(command) -> list[subprocess.Popen]:
    """Starts `command` as the 2 workers of a fresh 127.0.0.1 cluster (each with its own
    `TF_CONFIG`); returns the processes."""
    base_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    procs = []
    for index in range(2):
        env = dict(
            base_env,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        procs.append(
            subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _launch_workers(args, workdir, extra=()):
    """Starts train.py (`args`) as the 2 workers of a fresh cluster; returns the processes."""
    return _start_cluster([*args, f"--workdir={workdir}", "--strategy=multi_worker", *extra])


def _wait(procs, timeout=300) -> list[str]:
    """Waits for the workers; asserts they succeeded; returns each one's stdout + stderr."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [out + err for out, err in outputs]


@pytest.mark.slow
def test_two_workers_match_default_strategy_and_resume_without_replay(tmp_path):
    # Input sharded by data: both workers compute the global batches, each keeps its rows;
    # the saved input position is every worker's, so the resumed run (6 -> 9 steps) restores
    # it on both workers and still logs the losses of one replica.
    base_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    args = [
        sys.executable, "train.py", f"--config={TINY}", "--config.model.dropout=0.0",
        "--config.train.eval_every=3",
    ]  # fmt: skip
    procs = _launch_workers(args, tmp_path / "mw", ["--config.train.num_steps=6"])
    default = subprocess.run(
        [*args, f"--workdir={tmp_path / 'default'}", "--strategy=default",
         "--config.train.num_steps=9"],
        cwd=PROJECT_ROOT, env=base_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    logs = _wait(procs)
    assert default.returncode == 0, default.stderr[-3000:]
    assert all("input sharded by data" in log for log in logs), logs[0][-2000:]
    # Only the chief (worker 0) writes the checkpoint and summaries; worker 1's scratch is gone.
    assert (tmp_path / "mw" / "ckpt" / "ckpt-6.index").is_file()
    assert not (tmp_path / "mw" / ".scratch" / "worker_1").exists()
    # Evaluation at step 3 ran on the chief only: one picture, one metrics file.
    eval_files = sorted(os.listdir(tmp_path / "mw" / "eval"))
    assert [f for f in eval_files if f.startswith("picture_")] == [f"picture_{procs[0].pid}.txt"]
    assert "metrics_3.json" in eval_files
    resumed = _wait(_launch_workers(args, tmp_path / "mw", ["--config.train.num_steps=9"]))
    for log in resumed:
        assert "input position restored" in log and "replaying" not in log, log[-2000:]
    mw = _read_scalars(str(tmp_path / "mw" / "train"))["loss/total"]
    ref = _read_scalars(str(tmp_path / "default" / "train"))["loss/total"]
    assert sorted(mw) == sorted(ref) == list(range(1, 10))
    for step in ref:
        assert mw[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    print("2 workers, sharded by data: 9 steps (resumed at 6, input position restored) equal "
          "one replica's losses within rel 1e-5")  # fmt: skip


@pytest.mark.slow
def test_two_workers_shard_by_file_and_resume_by_replay(tmp_path):
    # 4 in-memory shards over 2 workers: "auto" splits the input by file (each worker
    # reads its own 2 shards); a resume replays each worker's own stream.
    args = [sys.executable, "train.py", f"--config={TINY}", "--config.data.shards=4"]
    logs = _wait(_launch_workers(args, tmp_path / "mw", ["--config.train.num_steps=4"]))
    for log in logs:
        assert "input sharded by file (4 training shards over 2 workers)" in log, log[-2000:]
    logs = _wait(_launch_workers(args, tmp_path / "mw", ["--config.train.num_steps=6"]))
    for log in logs:
        assert "resumed from" in log and "replaying the 4 steps" in log, log[-2000:]
    mw = _read_scalars(str(tmp_path / "mw" / "train"))["loss/total"]
    assert sorted(mw) == list(range(1, 7))
    print(f"2 workers, sharded by file: losses {[round(mw[s], 4) for s in sorted(mw)]}")


@pytest.fixture(scope="module")
def family_records(tmp_path_factory):
    """Tiny records of every family, as their own tests write them."""
    from sketch_tf.data.synthetic import prepare_synthetic
    from tests.families.style_sbir.test_task import write_style_records
    from tests.families.zooms.test_task import tiny_config
    from tests.families.zs_sbir.test_task import CATS as ZS_CATS

    base = tmp_path_factory.mktemp("mw_records")
    zooms = tiny_config(base / "zooms")
    prepare_synthetic("zooms", zooms.data.root, **zooms.data.synthetic.to_dict())
    prepare_synthetic("zs_sbir", base / "zs_sbir", image_size=48, n_per_category=4,
                      test_fraction=0.5, categories=ZS_CATS)  # fmt: skip
    write_style_records(base / "style_sbir" / "train", per_group=3)
    write_style_records(base / "style_sbir" / "test", per_group=2)
    return {name: str(base / name) for name in ("zooms", "zs_sbir", "style_sbir")}


@pytest.mark.slow
def test_every_family_on_two_workers_gives_the_losses_of_one_replica(family_records, tmp_path):
    # Two worker processes (one CPU replica each) train every family's tiny config, the two
    # stages of style_sbir included, under one MultiWorkerMirroredStrategy; this process
    # trains the same configs with one replica on the same global batches.
    from sketch_tf.train.run import train_run
    from tests.distributed import assert_same_runs
    from tests.multi_worker_families import family_configs

    spec = {
        "records": family_records,
        "workdirs": {name: str(tmp_path / "mw" / name) for name in family_records},
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    procs = _start_cluster([sys.executable, "-m", "tests.multi_worker_families", str(spec_path)])
    configs = family_configs(family_records)
    for name, config in configs.items():
        result = train_run(config, str(tmp_path / "one" / name), log=lambda *_: None)
        assert result.status == "completed", name
    logs = _wait(procs, timeout=600)
    done = [json.loads(line) for line in logs[0].splitlines() if line.startswith('{"family"')]
    assert [d["family"] for d in done] == list(configs)
    for name, config in configs.items():
        figures = assert_same_runs(
            config, str(tmp_path / "one" / name), spec["workdirs"][name], replicas=2
        )
        print(f"{name} on 2 workers: {figures}")
