"""bench/gpu_check.py: without a GPU it says so and exits 2; with --allow_cpu it runs the
same code (MirroredStrategy, float32 and mixed_float16 runs, the JSON line) on the CPU, here
with the tiny smoke models and a few steps."""

import json
import math
import os
import subprocess
import sys

from sketch_tf.paths import PROJECT_ROOT


def _run(*args, timeout=600):
    # No GPU visible, even on a GPU host: the CPU path is what is tested.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "bench/gpu_check.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_without_a_gpu_it_says_so_and_exits_2():
    proc = _run("--steps=2", "--warmup=1", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no GPU is visible" in proc.stderr and "--allow_cpu" in proc.stderr
    assert "no GPU is visible" in json.loads(proc.stdout.strip().splitlines()[-1])["error"]


def test_allow_cpu_smoke_runs_both_precisions():
    proc = _run("--allow_cpu", "--recipes=smoke", "--families=zooms", "--steps=2",
                "--warmup=1", "--per_category=3", "--batches=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["gpu"] is False and result["replicas"] == 1 and result["matmul_gflops"] > 0
    run = result["zooms"]["run"]
    for precision in ("float32", "mixed_float16"):
        figures = run[precision]
        assert figures["steps"] == 3 and figures["examples_per_s"] > 0, figures
        assert math.isfinite(figures["loss_first"]) and math.isfinite(figures["loss_last"])
    assert run["mixed_float16"]["ratio_vs_float32"] == round(
        run["mixed_float16"]["examples_per_s"] / run["float32"]["examples_per_s"], 3
    )
    assert "mixed_float16 but no GPU is visible" in proc.stderr  # the loop's warning
