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
