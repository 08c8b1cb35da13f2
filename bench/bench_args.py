"""Command-line flags of the bench scripts and the description of the machine they ran on."""

import argparse
import os
import platform


def int_flags(description: str, **defaults: int) -> argparse.Namespace:
    """Parses `--<name>=<int>` for every keyword of `defaults` (its value is the default)."""
    parser = argparse.ArgumentParser(description=description)
    for name, value in defaults.items():
        parser.add_argument(f"--{name}", type=int, default=int(value))
    return parser.parse_args()


def cpu_description() -> str:
    """CPU model, widest vector ISA and core count, e.g. "AMD EPYC | avx512 | 2 cpu".

    Figures of different machine kinds differ 2-3x: every bench prints this beside them.
    `ONEDNN_MAX_CPU_ISA` (oneDNN's own cap, used here to emulate an AVX2-only CPU) is named
    when set.
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse/other"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (
        f"{model} | {isa}"
        + (f" (oneDNN capped at {cap})" if cap else "")
        + (f" | {os.cpu_count()} cpu")
    )
