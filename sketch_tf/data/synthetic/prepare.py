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

import concurrent.futures
import contextlib
import fcntl
import multiprocessing
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from sketch_tf.core.png import encode_png
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
    test_pairs_per_category: int | None = None,
    n_points: int = 64,
    min_points: int = 8,
    overwrite: bool = False,
    shard_bytes: int = 64 << 20,
    workers: int = 1,
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
      test_pairs_per_category: zooms pairs per category of the test split when it should hold
        fewer (or more) than `pairs_per_category` (an evaluation reads only so many).
      n_points: at most this many corresponding points per pair; pairs with fewer than
        `min_points` are redrawn (up to 5 times, then skipped and reported in the manifest).
      overwrite: replace existing datasets.
      shard_bytes: target shard size.
      workers: processes rendering categories in parallel (`default_workers()`: one per CPU
        this process may use); the records are written in the same order, so the bytes do
        not depend on it. 1 renders in this process.

    Returns:
      {"train": manifest, "test": manifest}.
    """
    # Imported here so the NumPy renderer stays usable without TensorFlow.
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
    if int(workers) < 1:
        raise ValueError(f"prepare_synthetic: workers must be >= 1, got {workers}")
    kind = schema.KIND_CORRESPONDENCE_PAIR if task == "zooms" else schema.KIND_LABELLED_IMAGE
    sheet: dict[str, list[np.ndarray]] = {}
    manifests = {}
    with _category_mapper(min(int(workers), len(cats))) as mapper:
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
                if task == "style":
                    w.info["styles"] = styles
                per_split = test_pairs_per_category if split == "test" else None
                n_pairs = per_split or pairs_per_category or len(instances)
                if task == "zooms":
                    w.info.update(n_semantic=N_SEMANTIC, n_points=n_points, min_points=min_points)
                    w.info["pairs_per_category"] = n_pairs
                    w.info["test_pairs_per_category"] = test_pairs_per_category
                jobs = [
                    _CategoryJob(task, cat, ci, CATEGORIES.index(cat), instances, seed, size,
                                 tuple(styles), n_pairs, n_points, min_points)
                    for ci, cat in enumerate(cats)
                ]  # fmt: skip
                for job, (items, thumbs) in zip(jobs, mapper(_render_category, jobs), strict=True):
                    for item in items:
                        if isinstance(item, _Skipped):
                            w.skip(item.where, item.why)
                        else:
                            _write_item(w, schema, job, item)
                    if thumbs and not sheet.get(job.cat):
                        sheet[job.cat] = thumbs
            manifests[split] = w.manifest
    _contact_sheet([sheet[c] for c in cats if c in sheet], out_dir / "contact_sheet.png")
    return manifests


def stale_options(root: str | Path, task: str, options: dict) -> dict:
    """{option: (rendered, asked)} for the `prepare_synthetic(task, root, **options)` options
    that differ from those the records under `root` were rendered with (their train
    manifest's `info`); empty when they match or `root` holds no records yet.

    Raises:
      ValueError naming the manifest when `root` holds records the synthetic world did not
      write (a caller must not render over them).
    """
    from sketch_tf.data import tfrecord

    train = Path(root) / "train"
    if not train.is_dir():
        return {}
    manifest = tfrecord.read_manifest(train)
    info = manifest.get("info") or {}
    if info.get("generator") != "sketch_tf.data.synthetic":
        raise ValueError(
            f"{train / tfrecord.MANIFEST}: not records of the synthetic world "
            f"(generator {info.get('generator')!r}), not to be rendered over: move the folder "
            "or render elsewhere"
        )
    rendered = {**info, "categories": manifest.get("classes")}
    defaults = {"categories": list(CATEGORIES), "styles": list(STYLES)}
    stale = {}
    for key, asked in {"task": task, **options}.items():
        asked = list(asked) if isinstance(asked, tuple) else asked
        if asked is None:
            if key == "pairs_per_category":  # default: as many as instances, stored as such
                continue
            asked = defaults.get(key)
        if key not in rendered:  # an option added after these records were rendered
            if asked is not None:
                stale[key] = (None, asked)
        elif rendered[key] != asked:
            stale[key] = (rendered[key], asked)
    return stale


def ensure_synthetic(
    task: str,
    root: str | Path,
    *,
    workers: int = 0,
    log: Callable[[str], None] = print,
    **options,
) -> bool:
    """`prepare_synthetic(task, root, workers=..., **options)` unless `root` already holds
    both splits rendered with these options. It renders when the records are absent, half
    there (each split is renamed into place whole, so an interrupted rendering leaves the
    train split without the test split, and its writer's temporary folder, which is removed)
    or rendered with other options (`stale_options`: an older recipe, rendered again over
    them). An exclusive lock (`flock` on `<root>.lock`) is held meanwhile: processes sharing
    one dataset (two families of a main job) render it once, the others wait and find it
    there.

    Args:
      workers: rendering processes (0: `default_workers()`).
      log: receives one line per decision (rendering, and why again).

    Returns:
      True when it rendered, False when the records were there.

    Raises:
      ValueError naming the manifest (`stale_options`) when `root` holds records the
      synthetic world did not write: they are not rendered over.
    """
    from sketch_tf.data import tfrecord

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        stale = stale_options(root, task, options)
        # A rendering killed mid-split leaves its writer's temporary folder: under the lock,
        # nothing of ours is writing one.
        for split in ("train", "test"):
            for left in root.glob(f".{split}.tmp-*"):
                shutil.rmtree(left, ignore_errors=True)
        have = [(root / split / tfrecord.MANIFEST).is_file() for split in ("train", "test")]
        if all(have) and not stale:
            return False
        if stale:
            log(f"{root} was rendered with other options (rendered, configured): {stale}")
        log(f"rendering the synthetic {task} dataset into {root}")
        prepare_synthetic(
            task, root, workers=workers or default_workers(),
            overwrite=bool(stale) or have[0], **options,
        )  # fmt: skip
        return True


def default_workers() -> int:
    """Processes for `prepare_synthetic(workers=...)`: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class _CategoryJob(NamedTuple):
    """What one category of one split renders (everything its items' seeds depend on)."""

    task: str
    cat: str
    ci: int  # class id: index in the written categories
    gcode: int  # stable seed key: index in CATEGORIES
    instances: range
    seed: int
    size: int
    styles: tuple[str, ...]
    n_pairs: int
    n_points: int
    min_points: int


class _Skipped(NamedTuple):
    where: str
    why: str


@contextlib.contextmanager
def _category_mapper(workers: int):
    """`map` over categories: in this process, or ordered over `workers` spawned processes
    (spawned, not forked: the caller may have started TensorFlow's threads; this module and
    the renderer import no TensorFlow, so a worker starts in about a second)."""
    if workers <= 1:
        yield map
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield pool.map


def _render_category(job: _CategoryJob) -> tuple[list, list[np.ndarray]]:
    """(items in write order, contact-sheet thumbnails) of one category: rendering and PNG
    encoding, the costly part, which a worker process runs. An item is a `_Skipped` or the
    fields `_write_item` encodes."""
    # Single-threaded BLAS: the renderer's small products only lose time to thread wake-ups.
    with threadpool_limits(1):
        if job.task == "zs_sbir":
            return _sbir_items(job)
        if job.task == "style":
            return _style_items(job)
        return _zooms_items(job)


def _sbir_items(job: _CategoryJob):
    items, thumbs = [], []
    for inst in job.instances:
        shape = make_shape(job.cat, _shape_rng(job.seed, job.gcode, inst))
        for domain, k in (("sketch", 0), ("photo", 1)):
            rng = _item_rng(job.seed, "zs_sbir", job.gcode, inst, k)
            buf = render(shape, random_camera(rng), job.size)
            img = line_drawing(buf, rng) if domain == "sketch" else photo(buf, rng)
            items.append((encode_png(img), domain, f"{job.cat}/{inst:05d}", -1))
            if len(thumbs) < 2:
                thumbs.append(img)
    return items, thumbs


def _style_items(job: _CategoryJob):
    items, thumbs = [], []
    for inst in job.instances:
        shape = make_shape(job.cat, _shape_rng(job.seed, job.gcode, inst))
        iid = f"{job.cat}/{inst:05d}"
        rng = _item_rng(job.seed, "style", job.gcode, inst, 0)
        img = line_drawing(render(shape, random_camera(rng), job.size), rng)
        items.append((encode_png(img), "sketch", iid, -1))
        if not thumbs:
            thumbs.append(img)
        for si, style in enumerate(job.styles):
            rng = _item_rng(job.seed, "style", job.gcode, inst, 1 + STYLES.index(style))
            img = stylize(render(shape, random_camera(rng), job.size), style, rng)
            items.append((encode_png(img), style, iid, si))
            if len(thumbs) < 1 + len(job.styles):
                thumbs.append(img)
    return items, thumbs


def _zooms_items(job: _CategoryJob):
    items, thumbs = [], []
    pool = list(job.instances)
    shapes = {i: make_shape(job.cat, _shape_rng(job.seed, job.gcode, i)) for i in pool}
    for k in range(job.n_pairs):
        for attempt in range(5):
            rng = _item_rng(job.seed, "zooms", job.gcode, k + 1000 * pool[0], attempt)
            ia = pool[k % len(pool)]
            # Two instances when possible; the last attempt falls back to two views of one
            # instance (variants such as round / square tables share no parts).
            others = [i for i in pool if i != ia]
            ib = others[int(rng.integers(len(others)))] if others and attempt < 4 else ia
            pair = correspondence_pair(
                job.cat, rng, job.size, job.n_points, shape_a=shapes[ia], shape_b=shapes[ib]
            )
            if len(pair["point_ids"]) >= job.min_points:
                break
        else:
            items.append(
                _Skipped(f"{job.cat}/pair{k}", f"fewer than {job.min_points} common visible points")
            )
            continue
        items.append((k, ia, ib, encode_png(pair["image_a"]), encode_png(pair["image_b"]),
                      pair["points_a"], pair["points_b"], pair["point_ids"]))  # fmt: skip
        if len(thumbs) < 2:
            thumbs += [_mark(pair["image_a"], pair["points_a"]),
                       _mark(pair["image_b"], pair["points_b"])]  # fmt: skip
    return items, thumbs


def _write_item(w, schema, job: _CategoryJob, item) -> None:
    """Encodes one rendered item of `job` as its record and writes it."""
    if job.task == "zooms":
        k, ia, ib, png_a, png_b, points_a, points_b, point_ids = item
        rec = schema.encode_correspondence_pair(
            png_a, png_b, points_a, points_b, point_ids, job.cat, job.ci,
            instance_a=f"{job.cat}/{ia:05d}", instance_b=f"{job.cat}/{ib:05d}",
            view_a=f"pair{k}/a", view_b=f"pair{k}/b",
        )  # fmt: skip
        w.write(rec, class_id=job.ci, class_name=job.cat, domain="sketch")
        return
    png, domain, iid, style_id = item
    if style_id >= 0:
        rec = schema.encode_labelled_image(
            png, job.ci, job.cat, domain, instance_id=iid, style_id=style_id, content_id=job.ci
        )
    else:
        rec = schema.encode_labelled_image(png, job.ci, job.cat, domain, instance_id=iid)
    w.write(rec, class_id=job.ci, class_name=job.cat, domain=domain)


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
