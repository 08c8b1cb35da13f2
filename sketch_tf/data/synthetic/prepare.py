"""Write the synthetic world as TFRecord datasets (the entry point `prepare_data.py` calls).

Layout written under `out_dir`:

```
out_dir/train/{data-*.tfrecord, manifest.json}
out_dir/test/{data-*.tfrecord, manifest.json}
out_dir/contact_sheet.png
```

Every category is written (class id = index in `CATEGORIES`); configs pick seen / unseen
categories. Train and test hold different shape instances of every category (the last
`test_fraction` of each category's instances are test). All randomness comes from
`np.random.default_rng([seed, ...item keys])`, so a seed gives identical record bytes, and an
instance (seed, category, index) is the same shape in every task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sketch_tf.data.images import encode_png
from sketch_tf.data.synthetic.categories import CATEGORIES, make_shape
from sketch_tf.data.synthetic.correspondence import N_SEMANTIC, correspondence_pair
from sketch_tf.data.synthetic.draw import STYLES, line_drawing, photo, stylize
from sketch_tf.data.synthetic.geometry import random_camera, render

TASKS = ("zooms", "zs_sbir", "style")
_TASK_CODE = {"zooms": 1, "zs_sbir": 2, "style": 3}


def _shape_rng(seed: int, cat: int, inst: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0, cat, inst])


def _item_rng(seed: int, task: str, cat: int, item: int, k: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _TASK_CODE[task], cat, item, k])


def split_instances(n_per_category: int, test_fraction: float) -> dict[str, range]:
    """Instance index ranges of the train and test splits (test = the last ones)."""
    if n_per_category < 2:
        raise ValueError(f"n_per_category must be >= 2 (train and test), got {n_per_category}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(n_per_category - 1, max(1, int(round(n_per_category * test_fraction))))
    n_train = n_per_category - n_test
    return {"train": range(n_train), "test": range(n_train, n_per_category)}


def _contact_sheet(rows: list[list[np.ndarray]], path: Path, thumb: int = 96) -> None:
    tiles = []
    width = max(len(r) for r in rows)
    for r in rows:
        row = [np.asarray(Image.fromarray(im).resize((thumb, thumb), Image.LANCZOS)) for im in r]
        row += [np.full((thumb, thumb, 3), 255, np.uint8)] * (width - len(row))
        tiles.append(np.concatenate(row, 1))
    Image.fromarray(np.concatenate(tiles, 0)).save(path)


def prepare_synthetic(
    task: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int | None = None,
    n_per_category: int = 20,
    test_fraction: float = 0.2,
    categories: list[str] | None = None,
    styles: list[str] | None = None,
    pairs_per_category: int | None = None,
    n_points: int = 64,
    min_points: int = 8,
    overwrite: bool = False,
    shard_bytes: int = 64 << 20,
) -> dict[str, dict]:
    """Render and write one task's synthetic dataset.

    Args:
      task: "zs_sbir" (labelled_image, domains "sketch" and "photo": one sketch and one photo
        of every instance, each from its own random view), "style" (labelled_image: one image
        per instance per style with domain = style name, `style_id` = index in `styles`,
        `content_id` = class id, plus one domain "sketch" drawing per instance as the query)
        or "zooms" (correspondence_pair records of two instances of one category from the
        same split).
      out_dir: output folder; `train/`, `test/` and `contact_sheet.png` are written in it.
      seed: makes the output reproducible byte for byte.
      image_size: image side in pixels (default 512 for zooms, 256 otherwise).
      n_per_category: shape instances per category (split into train / test).
      test_fraction: share of each category's instances held out for test.
      categories: subset of `CATEGORIES` to write (default all; class ids stay the index in
        the given list).
      styles: subset of `STYLES` for the style task (default all seven).
      pairs_per_category: zooms pairs per category and split (default = instances in it).
      n_points: at most this many corresponding points per pair; pairs with fewer than
        `min_points` are redrawn (up to 5 times, then skipped and reported in the manifest).
      overwrite: replace existing datasets.
      shard_bytes: target shard size.

    Returns:
      {"train": manifest, "test": manifest}.
    """
    # Imported here so the NumPy renderer stays usable without TensorFlow.
    from threadpoolctl import threadpool_limits

    from sketch_tf.data import schema
    from sketch_tf.data.tfrecord import ShardedWriter

    if task not in TASKS:
        raise ValueError(f"prepare_synthetic: task must be one of {TASKS}, got {task!r}")
    cats = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown or not cats:
        raise ValueError(f"prepare_synthetic: unknown categories {unknown}; known: {CATEGORIES}")
    styles = list(STYLES if styles is None else styles)
    bad = [s for s in styles if s not in STYLES]
    if bad or not styles:
        raise ValueError(f"prepare_synthetic: unknown styles {bad}; known: {STYLES}")
    size = int(image_size or (512 if task == "zooms" else 256))
    if size < 32:
        raise ValueError(f"prepare_synthetic: image_size must be >= 32, got {size}")
    splits = split_instances(n_per_category, test_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = schema.KIND_CORRESPONDENCE_PAIR if task == "zooms" else schema.KIND_LABELLED_IMAGE
    gcode = [CATEGORIES.index(c) for c in cats]  # stable per-category seed keys
    sheet: dict[str, list[np.ndarray]] = {}
    manifests = {}
    # Single-threaded BLAS: the renderer's small products only lose time to thread wake-ups.
    with threadpool_limits(1):
        for split, instances in splits.items():
            with ShardedWriter(
                out_dir / split,
                kind,
                classes=cats,
                overwrite=overwrite,
                shard_bytes=shard_bytes,
            ) as w:
                w.info = {
                    "generator": "sketch_tf.data.synthetic",
                    "task": task,
                    "split": split,
                    "seed": seed,
                    "image_size": size,
                    "n_per_category": n_per_category,
                    "instances": [instances.start, instances.stop],
                    "test_fraction": test_fraction,
                }
                if task == "zs_sbir":
                    _write_sbir(w, schema, cats, gcode, instances, seed, size, sheet)
                elif task == "style":
                    w.info["styles"] = styles
                    _write_style(w, schema, cats, gcode, instances, seed, size, styles, sheet)
                else:
                    w.info.update(n_semantic=N_SEMANTIC, n_points=n_points, min_points=min_points)
                    n_pairs = pairs_per_category or len(instances)
                    w.info["pairs_per_category"] = n_pairs
                    _write_zooms(
                        w, schema, cats, gcode, instances, seed, size, n_pairs, n_points,
                        min_points, sheet,
                    )  # fmt: skip
            manifests[split] = w.manifest
    _contact_sheet([sheet[c] for c in cats if c in sheet], out_dir / "contact_sheet.png")
    return manifests


def _write_sbir(w, schema, cats, gcode, instances, seed, size, sheet):
    for ci, cat in enumerate(cats):
        for inst in instances:
            shape = make_shape(cat, _shape_rng(seed, gcode[ci], inst))
            for domain, k in (("sketch", 0), ("photo", 1)):
                rng = _item_rng(seed, "zs_sbir", gcode[ci], inst, k)
                buf = render(shape, random_camera(rng), size)
                img = line_drawing(buf, rng) if domain == "sketch" else photo(buf, rng)
                rec = schema.encode_labelled_image(
                    encode_png(img), ci, cat, domain, instance_id=f"{cat}/{inst:05d}"
                )
                w.write(rec, class_id=ci, class_name=cat, domain=domain)
                if len(sheet.setdefault(cat, [])) < 2:
                    sheet[cat].append(img)


def _write_style(w, schema, cats, gcode, instances, seed, size, styles, sheet):
    for ci, cat in enumerate(cats):
        for inst in instances:
            shape = make_shape(cat, _shape_rng(seed, gcode[ci], inst))
            iid = f"{cat}/{inst:05d}"
            rng = _item_rng(seed, "style", gcode[ci], inst, 0)
            img = line_drawing(render(shape, random_camera(rng), size), rng)
            rec = schema.encode_labelled_image(encode_png(img), ci, cat, "sketch", instance_id=iid)
            w.write(rec, class_id=ci, class_name=cat, domain="sketch")
            row = sheet.setdefault(cat, [])
            if len(row) == 0:
                row.append(img)
            for si, style in enumerate(styles):
                rng = _item_rng(seed, "style", gcode[ci], inst, 1 + STYLES.index(style))
                img = stylize(render(shape, random_camera(rng), size), style, rng)
                rec = schema.encode_labelled_image(
                    encode_png(img), ci, cat, style, instance_id=iid, style_id=si, content_id=ci
                )
                w.write(rec, class_id=ci, class_name=cat, domain=style)
                if len(row) < 1 + len(styles):
                    row.append(img)


def _write_zooms(
    w, schema, cats, gcode, instances, seed, size, n_pairs, n_points, min_points, sheet
):
    skipped = 0
    pool = list(instances)
    for ci, cat in enumerate(cats):
        shapes = {i: make_shape(cat, _shape_rng(seed, gcode[ci], i)) for i in pool}
        for k in range(n_pairs):
            for attempt in range(5):
                rng = _item_rng(seed, "zooms", gcode[ci], k + 1000 * pool[0], attempt)
                ia = pool[k % len(pool)]
                # Two instances when possible; the last attempt falls back to two views of one
                # instance (variants such as round / square tables share no parts).
                others = [i for i in pool if i != ia]
                ib = others[int(rng.integers(len(others)))] if others and attempt < 4 else ia
                pair = correspondence_pair(
                    cat, rng, size, n_points, shape_a=shapes[ia], shape_b=shapes[ib]
                )
                if len(pair["point_ids"]) >= min_points:
                    break
            else:
                skipped += 1
                w.skip(f"{cat}/pair{k}", f"fewer than {min_points} common visible points")
                continue
            rec = schema.encode_correspondence_pair(
                encode_png(pair["image_a"]),
                encode_png(pair["image_b"]),
                pair["points_a"],
                pair["points_b"],
                pair["point_ids"],
                cat,
                ci,
                instance_a=f"{cat}/{ia:05d}",
                instance_b=f"{cat}/{ib:05d}",
                view_a=f"pair{k}/a",
                view_b=f"pair{k}/b",
            )
            w.write(rec, class_id=ci, class_name=cat, domain="sketch")
            if len(sheet.setdefault(cat, [])) < 2:
                sheet[cat] += [_mark(pair["image_a"], pair["points_a"]),
                               _mark(pair["image_b"], pair["points_b"])]  # fmt: skip


def _mark(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Copy of a drawing with each point drawn as a coloured dot (colour = point order)."""
    out = image.copy()
    size = image.shape[0]
    r = max(2, size // 128)
    n = max(len(points), 1)
    for i, (x, y) in enumerate(points):
        phase = i / n * 2 * np.pi + np.array([0.0, 2.1, 4.2])
        c = (np.sin(phase) * 110 + 128).astype(np.uint8)
        xi, yi = int(x), int(y)
        out[max(0, yi - r) : yi + r + 1, max(0, xi - r) : xi + r + 1] = c
    return out
