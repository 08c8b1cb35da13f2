"""The README's main job, end to end on a tiny synthetic world (`main_job.py --smoke`):
render -> train -> evaluate -> export for every family, then the results table."""

import json
import os
import subprocess
import sys

import pytest

from sketch_tf.paths import PROJECT_ROOT
from tests.conftest import requires_hed


@requires_hed
@pytest.mark.slow
def test_main_job_smoke(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "main_job.py", "--smoke", f"--workdir={tmp_path}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "## results on held-out data" in out
    for family in ("zooms", "zs_sbir", "style_sbir"):
        run = tmp_path / family
        exports = [name for name in os.listdir(run / "export") if name.isdigit()]
        assert len(exports) == 1 and (run / "export" / exports[0] / "saved_model.pb").is_file()
        assert (run / "export" / "models.config").is_file()
        # The two-stage recipe keeps its checkpoints and evaluation in its last stage.
        last = run / "triplet" if family == "style_sbir" else run
        assert (last / "ckpt" / "checkpoint").is_file()
        assert any(name.startswith("metrics_") for name in os.listdir(last / "eval"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0.0 <= results["zs_sbir"]["scalars"]["map_all"] <= 1.0
    assert 0.0 <= results["zooms"]["scalars"]["seen/ours/pck@5%"] <= 1.0
    assert 0.0 <= results["style_sbir"]["scalars"]["sketch_style_map"] <= 1.0
    # The smoke data went under the workdir, not into the project's data/records.
    assert (tmp_path / "records" / "synthetic_zooms" / "train" / "manifest.json").is_file()
    _retrieve_from_the_main_job_runs(tmp_path, env)


def _retrieve_from_the_main_job_runs(tmp_path, env):
    """retrieve.py on the main job's runs: the export's gallery, a records folder with a saved
    index, the style family's sketch + exemplar."""
    from sketch_tf.core.png import encode_png
    from sketch_tf.export.inputs import example_drawing

    query = tmp_path / "query.png"
    query.write_bytes(encode_png(example_drawing(64)))
    exemplar = tmp_path / "exemplar.png"
    exemplar.write_bytes(encode_png(255 - example_drawing(64)))

    def retrieve(*args):
        proc = subprocess.run([sys.executable, "retrieve.py", f"--query={query}", *args],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        return proc

    zs, style = tmp_path / "zs_sbir", tmp_path / "style_sbir"
    proc = retrieve(f"--export_dir={zs / 'export'}", "--k=3", f"--out={tmp_path / 'grid.png'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "score"])
    assert [line.split()[0] for line in lines[head + 1 : head + 4]] == ["1", "2", "3"]
    assert (tmp_path / "grid.png").stat().st_size > 0
    records = next((tmp_path / "records").glob("*zs_sbir*")) / "test"
    proc = retrieve(f"--workdir={zs}", f"--gallery={records}", f"--save_index={tmp_path / 'ix'}",
                    "--k=100000")  # fmt: skip
    assert proc.returncode == 0 and (tmp_path / "ix" / "manifest.json").is_file(), proc.stderr
    assert "fewer than --k" in proc.stdout
    # The zs_sbir index is refused by the style run (another model), with exit status 2.
    proc = retrieve(f"--workdir={style}", f"--index={tmp_path / 'ix'}", f"--exemplar={exemplar}",
                    "--alpha=0.5")  # fmt: skip
    assert proc.returncode == 2 and "another model" in proc.stderr, proc.stderr[-3000:]
    proc = retrieve(f"--export_dir={style / 'export'}", f"--exemplar={exemplar}", "--alpha=0.7")
    assert proc.returncode == 0 and "rank" in proc.stdout, proc.stderr[-3000:]


def _sigterm_at_first_step(args):
    """Runs main_job.py with `args` and sends it a real SIGTERM when a family process logs its
    first training step (relayed as "[family] ... step 1/..."); returns (exit status, stderr,
    stdout)."""
    import signal

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(
        [sys.executable, "main_job.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("[") and "] step 1/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stderr.readlines()
        stdout = proc.stdout.read()
        status = proc.wait(timeout=300)
    finally:
        proc.kill()
    return status, "".join(lines), stdout


@pytest.mark.slow
def test_main_job_stops_when_training_is_interrupted(tmp_path):
    """One family at a time: SIGTERM during zooms' training saves its checkpoint and stops the
    job there (no evaluation, export, next family, table or results.json), exit 143."""
    import re
    import signal

    args = ["--smoke", "--families=zooms,zs_sbir", "--jobs=1", f"--workdir={tmp_path}"]
    status, stderr, stdout = _sigterm_at_first_step(args)
    assert status == 128 + signal.SIGTERM, stderr[-4000:]
    run = tmp_path / "zooms"
    stopped = re.search(
        "interrupted by SIGTERM: the main job's training of family 'zooms' "
        + re.escape(f"({run}) stopped at step ")
        + r"(\d+) "
        + re.escape(f"(checkpoint {run / 'ckpt'}/ckpt-")
        + r"(\d+)\)\.",
        stderr,
    )
    assert stopped and stopped.group(1) == stopped.group(2), stderr[-4000:]
    assert "Not evaluated or exported" in stderr
    resume = f"Resume with:\n  {sys.executable} main_job.py {' '.join(args)}"
    assert resume in stderr, stderr[-4000:]
    # No evaluation, no export, no next family, no results table or results.json.
    assert (run / "ckpt" / f"ckpt-{stopped.group(1)}.index").is_file()
    assert not (run / "export").exists()
    assert not list(run.glob("eval/metrics_*"))
    assert not (tmp_path / "zs_sbir").exists()
    assert not (tmp_path / "results.json").exists()
    assert "## results" not in stdout


@pytest.mark.slow
def test_parallel_main_job_stops_every_family_on_sigterm(tmp_path):
    """--jobs=2: SIGTERM to the main job reaches both family processes once; each stops its
    training at a checkpoint (or, past training, ends), and the job exits 143 with the
    resume command, without a results table."""
    import signal

    args = ["--smoke", "--families=zooms,zs_sbir", "--jobs=2", f"--workdir={tmp_path}"]
    status, stderr, stdout = _sigterm_at_first_step(args)
    assert status == 128 + signal.SIGTERM, stderr[-4000:]
    assert "interrupted by SIGTERM" in stderr, stderr[-4000:]
    assert f"Resume with:\n  {sys.executable} main_job.py {' '.join(args)}" in stderr
    checkpoints = [tmp_path / f / "ckpt" / "checkpoint" for f in ("zooms", "zs_sbir")]
    assert any(c.is_file() for c in checkpoints), stderr[-4000:]
    assert not (tmp_path / "results.json").exists()
    assert "## results" not in stdout
