"""What machine this is, for the per-machine kernel cache (`core/kernels.py`) and the bench
scripts' JSON lines; free of TensorFlow."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC"), else what `platform` says
    ("unknown cpu" when it says nothing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"
