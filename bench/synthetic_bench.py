"""Throughput of the synthetic world at 256 x 256 on this machine (single process).

Run: python bench/synthetic_bench.py [--n 120] [--size 256]

Each line drawing / photo includes drawing a new shape, a new random camera, ray casting the
buffers and making the image (everything `prepare_synthetic` does per image except PNG
encoding). Prints one JSON object as its last line; `loadavg_1min` says how busy the shared
machine was, so figures taken under load can be compared by ratio.

Quiet machine (2-core AMD EPYC, AVX-512, load 0.5-0.8, after issue 26's renderer changes):
line_drawings_per_s 81-96 (target 50), photos_per_s 58-62, renders_per_s 188-233,
styled_images_per_s 60-61 (the code before them, alternated in the same session: 67-70,
39-49, 149-150, 52-55).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_args import cpu_description, machine_figures  # noqa: E402

from sketch_tf.data.synthetic import (  # noqa: E402
    CATEGORIES,
    line_drawing,
    make_shape,
    photo,
    random_camera,
    render,
    stylize,
)


def _rate(fn, n, rng):
    for i in range(3):  # warm-up (caches, first-call imports)
        fn(CATEGORIES[i % len(CATEGORIES)], rng)
    t = time.perf_counter()
    for i in range(n):
        fn(CATEGORIES[i % len(CATEGORIES)], rng)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    size = args.size
    rng = np.random.default_rng(0)

    def sketch(cat, rng):
        return line_drawing(render(make_shape(cat, rng), random_camera(rng), size), rng)

    def shot(cat, rng):
        return photo(render(make_shape(cat, rng), random_camera(rng), size), rng)

    def buffers(cat, rng):
        return render(make_shape(cat, rng), random_camera(rng), size)

    def styled(cat, rng):
        b = render(make_shape(cat, rng), random_camera(rng), size)
        return stylize(b, ["comic", "watercolor", "oilpaint", "graphite"][rng.integers(4)], rng)

    load0 = os.getloadavg()[0]
    with threadpool_limits(1):
        out = {
            "image_size": size,
            "n": args.n,
            "line_drawings_per_s": round(_rate(sketch, args.n, rng), 2),
            "photos_per_s": round(_rate(shot, args.n, rng), 2),
            "renders_per_s": round(_rate(buffers, args.n, rng), 2),
            "styled_images_per_s": round(_rate(styled, args.n // 2, rng), 2),
        }
    out["target_line_drawings_per_s"] = 50
    out["loadavg_1min"] = round((load0 + os.getloadavg()[0]) / 2, 2)
    out["cpu_count"] = os.cpu_count()
    out["cpu"] = cpu_description()
    out.update(machine_figures())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
