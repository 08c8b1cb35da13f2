"""Shared pytest fixtures.

TensorFlow is imported once per test process; tests build tiny inputs and train a handful of
steps so the whole suite stays fast on 2 cores.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from sketch_tf.paths import SHARED_DATA_ENV, shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (or $SKETCH_TF_SHARED_DATA); skips the test when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(
            f"real data folder {path} is absent (set {SHARED_DATA_ENV} to its location)"
        )
    return path
