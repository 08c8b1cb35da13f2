"""Input pipeline throughput: TFRecord tf.data triplets vs a PIL-in-Python baseline.

Both sides produce the same training examples: cross-domain triplets (sketch anchor, photo of
the same class, photo of another class), decoded, resized to 224x224 (sketch: keep aspect,
white pad; photo: resize + centre crop), augmented (flip + small rotation; stroke jitter /
colour jitter on ours), float32 in [0, 1], batched. Data: PACS sketch + photo from the shared
data folder when present, else generated images in the same folder layout. Same process, same
cores, one run each.

    python bench/input_bench.py [--batch 32 --batches 20]

Last line: {"tfrecord_per_s", "baseline_per_s", "ratio_vs_pil", ...} (triplets per second).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from sketch_tf.data import pipeline  # noqa: E402
from sketch_tf.data.sources import prepare  # noqa: E402
from sketch_tf.paths import shared_data_dir  # noqa: E402

SIZE = 224


def _generated(root: Path, n_per: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c", "d"):
        for dom in ("sketch", "photo"):
            d = root / dom / c
            d.mkdir(parents=True)
            for i in range(n_per):
                if dom == "sketch":
                    im = Image.new("L", (256, 256), 255)
                    dr = ImageDraw.Draw(im)
                    for _ in range(8):
                        dr.line(list(map(int, rng.integers(0, 256, 4))), fill=0, width=3)
                    im.save(d / f"{i}.png")
                else:
                    arr = rng.integers(0, 256, (227, 227, 3), dtype=np.uint8)
                    Image.fromarray(arr).save(d / f"{i}.jpg", quality=90)
    return root


def _pil_sketch(path, rnd):
    im = Image.open(path).convert("RGB")
    im.thumbnail((SIZE, SIZE), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    canvas.paste(im, ((SIZE - im.width) // 2, (SIZE - im.height) // 2))
    if rnd.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = canvas.rotate(
        rnd.uniform(-10, 10), Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)
    )
    return np.asarray(canvas, np.float32) / 255.0


def _pil_photo(path, rnd):
    im = Image.open(path).convert("RGB")
    s = SIZE / min(im.size)
    im = im.resize(
        (max(SIZE, round(im.width * s)), max(SIZE, round(im.height * s))), Image.Resampling.BILINEAR
    )
    left, top = (im.width - SIZE) // 2, (im.height - SIZE) // 2
    im = im.crop((left, top, left + SIZE, top + SIZE))
    if rnd.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.rotate(rnd.uniform(-10, 10), Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    x = np.asarray(im, np.float32) / 255.0
    return np.clip(x * rnd.uniform(0.8, 1.2), 0.0, 1.0)


def baseline(root: Path, batch: int, batches: int) -> float:
    """Triplets/s of a plain Python loop reading the folder layout with PIL."""
    files = {
        dom: {c.name: sorted(c.iterdir()) for c in sorted((root / dom).iterdir())}
        for dom in ("sketch", "photo")
    }
    classes = sorted(files["sketch"])
    rnd = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(batches):
        sk, pos, neg = [], [], []
        for _ in range(batch):
            a = rnd.choice(classes)
            n = rnd.choice([c for c in classes if c != a])
            sk.append(_pil_sketch(rnd.choice(files["sketch"][a]), rnd))
            pos.append(_pil_photo(rnd.choice(files["photo"][a]), rnd))
            neg.append(_pil_photo(rnd.choice(files["photo"][n]), rnd))
        np.stack(sk), np.stack(pos), np.stack(neg)
    return batch * batches / (time.perf_counter() - t0)


def ours(ds_dir: Path, batch: int, batches: int) -> float:
    """Triplets/s of pipeline.triplet_batches over the TFRecords (after 2 warm-up batches)."""
    ds = pipeline.triplet_batches(ds_dir, batch, SIZE, seed=0, training=True)
    it = iter(ds)
    for _ in range(2):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    b["sketch"].numpy()
    return batch * batches / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    pacs = shared_data_dir() / "pacs"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if pacs.is_dir():
            root, data = pacs, "pacs sketch+photo"
        else:
            root, data = _generated(tmp / "gen"), "generated"
        t0 = time.perf_counter()
        prepare("folders", root, tmp / "tfr", domains=["sketch", "photo"])
        prep_s = time.perf_counter() - t0
        tf_rate = ours(tmp / "tfr", args.batch, args.batches)
        pil_rate = baseline(root, args.batch, args.batches)
    print(
        json.dumps(
            {
                "data": data,
                "image_size": SIZE,
                "batch": args.batch,
                "batches": args.batches,
                "cpu_count": os.cpu_count(),
                "prepare_s": round(prep_s, 2),
                "tfrecord_per_s": round(tf_rate, 1),
                "baseline_per_s": round(pil_rate, 1),
                "ratio_vs_pil": round(tf_rate / pil_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
