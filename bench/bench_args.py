"""Command-line flags of the bench scripts and the description of the machine they ran on:
its CPU and its fp32 matmul rate, measured in the same run (`machine_figures`), so that
figures of machines 3x apart in speed can be compared (`fraction_of_matmul`)."""

import argparse
import os
import time

from sketch_tf.core.machine import cpu_model


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
    model, flags = cpu_model(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
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


def matmul_gflops(size: int = 4096, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate in GFLOP/s: a TensorFlow `size` x `size` `tf.matmul`
    (2 size^3 FLOPs) on the CPU, the best of `repeats` timed runs after one untimed warm-up
    (tracing, oneDNN kernel creation): on a shared machine the best run is the one least
    slowed by other processes. About 0.7 s per run at 200 GFLOP/s, 2.3 s at 60."""
    import tensorflow as tf  # noqa: PLC0415 - only the benches that report it pay the import

    with tf.device("/CPU:0"):
        a = tf.random.stateless_normal([size, size], seed=[0, 1])
        b = tf.random.stateless_normal([size, size], seed=[2, 3])
        # The sum makes the caller wait for the product (one scalar back, no 64 MB copy).
        product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
        product(a, b).numpy()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product(a, b).numpy()
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def machine_figures() -> dict:
    """`{"cpu_model": ..., "matmul_gflops": ...}` for a bench's JSON line (measured now)."""
    return {"cpu_model": cpu_model(), "matmul_gflops": round(matmul_gflops(), 1)}


def fraction_of_matmul(flops_per_s: float, gflops: float) -> float:
    """A model figure's FLOP rate (`sketch_tf.models.flops.count_flops` x items/s) as a
    fraction of the machine's matmul rate `gflops` (`matmul_gflops`); 3 decimals."""
    return round(flops_per_s / (gflops * 1e9), 3)
