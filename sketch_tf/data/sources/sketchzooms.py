"""The original SketchZooms layout -> `correspondence_pair` records.

Layout (as read by the original code, `utils/SZDataset.py` of pablo1n7/SketchZoomsDeep):

```
<root>/csv/train.csv, <root>/csv/test.csv   columns: [pandas index,] model_0, model_1,
                                            index_0, index_1, view, model
<root>/pts_<Category>/<model>/<point>/view_<v>.png
```

Each CSV row names one corresponding point seen on two shapes of one category (the `model`
column): `view` holds TWO view ids separated by a space, `"<v0> <v1>"`; drawing A is
`pts_<model>/<model_0>/<index_0>/view_<v0>.png` and drawing B is
`pts_<model>/<model_1>/<index_1>/view_<v1>.png`. A leading unnamed column (the index pandas
writes) is ignored. Each PNG is a line drawing rendered for (and centred on) that point, so
the point's pixel position is the image centre `(w / 2, h / 2)` (pixel-corner convention, see
`schema`). The semantic point id stored is `index_0` (the id of the point on the first shape;
`index_1` is kept in the `instance_b` string as `<model_1>#<index_1>`), and `view_a` / `view_b`
hold `v0` / `v1`.

Assumption (not verifiable here without the original data): the PNGs are point-centred;
`point_location="centre"` is the only mode implemented. Pass `categories=` to restrict.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from sketch_tf.data import schema
from sketch_tf.data.sources.common import (
    BadInputError,
    WriteOptions,
    class_index,
    load_image_bytes,
    open_dataset,
)

#: Record kind this source writes.
KIND = schema.KIND_CORRESPONDENCE_PAIR
COLUMNS = ("model_0", "model_1", "index_0", "index_1", "view", "model")


def read_rows(csv_path: Path) -> list[dict]:
    """Rows of a SketchZooms CSV, checked for the required columns and integer fields."""
    if not csv_path.is_file():
        raise ValueError(f"SketchZooms CSV {csv_path} is missing")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing} (have {header})")
        rows = []
        for line_no, row in enumerate(reader, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            for k in ("index_0", "index_1"):
                if not row[k].lstrip("-").isdigit():
                    raise ValueError(f"{csv_path}:{line_no}: {k}={row[k]!r} is not an integer")
            row["_where"] = f"{csv_path}:{line_no}"
            rows.append(row)
    return rows


def row_views(row: dict) -> tuple[str, str]:
    """(view of drawing A, view of drawing B) from a row's `view` column, `"<v0> <v1>"`.

    Raises BadInputError naming the row when the column does not hold exactly two ids."""
    views = row["view"].split()
    if len(views) != 2:
        raise BadInputError(
            f"{row['_where']}: view={row['view']!r}: expected two view ids separated by a "
            "space ('<view of model_0> <view of model_1>')"
        )
    return views[0], views[1]


def _drawing(root: Path, category: str, model: str, index: str, view: str):
    path = root / f"pts_{category}" / model / index / f"view_{view}.png"
    data = load_image_bytes(path)
    with Image.open(path) as im:
        w, h = im.size
    return data, np.array([[w / 2.0, h / 2.0]], np.float32), path


def prepare(
    root,
    out_dir,
    split: str = "train",
    categories=None,
    skip_bad: bool = False,
    shard_bytes: int = 128 << 20,
    overwrite: bool = False,
) -> dict:
    """Convert `csv/<split>.csv` of a SketchZooms tree into `correspondence_pair` records.

    Args:
      root: folder holding `csv/` and the `pts_<Category>/` folders.
      split: "train" or "test" (which CSV to read).
      categories: keep only these categories (default all in the CSV).
      skip_bad: skip rows whose PNGs are missing or corrupt (recorded in the manifest).

    Returns:
      the manifest dict.
    """
    root = Path(root)
    rows = read_rows(root / "csv" / f"{split}.csv")
    if categories is not None:
        rows = [r for r in rows if r["model"] in set(categories)]
    if not rows:
        raise ValueError(f"{root}/csv/{split}.csv: no rows (after category filter)")
    ids = class_index(r["model"] for r in rows)
    opts = WriteOptions(skip_bad, shard_bytes, "class", overwrite)
    with open_dataset(out_dir, KIND, sorted(ids), "sketchzooms", root, opts) as (writer, policy):
        for r in rows:
            c = r["model"]
            try:
                view_a, view_b = row_views(r)
                img_a, pa, _ = _drawing(root, c, r["model_0"], r["index_0"], view_a)
                img_b, pb, _ = _drawing(root, c, r["model_1"], r["index_1"], view_b)
            except BadInputError as e:
                where = r["_where"]
                message = str(e) if str(e).startswith(where) else f"{where}: {e}"
                policy.handle(BadInputError(message), where)
                continue
            rec = schema.encode_correspondence_pair(
                img_a,
                img_b,
                pa,
                pb,
                [int(r["index_0"])],
                c,
                ids[c],
                instance_a=f"{r['model_0']}#{r['index_0']}",
                instance_b=f"{r['model_1']}#{r['index_1']}",
                view_a=view_a,
                view_b=view_b,
            )
            writer.write(rec, class_id=ids[c], class_name=c, domain="sketch")
        writer.info.update(split=split, point_location="centre")
    return writer.manifest
