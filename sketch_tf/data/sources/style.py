"""Style-labelled image collections -> `labelled_image` records with style and content ids.

Two inputs:

- CSV (`<root>/labels.csv` or `csv_path=`) with columns `path` (relative to `image_dir`,
  default the CSV's folder), `style`, `content`, optional `instance`.
- A BAM!-like sqlite file (`sqlite_path=`): one table (`table=`, default the first table
  having `media_*` columns) with an id column (`id_column`, default `mid`), `media_<style>`
  and `content_<content>` attribute columns holding "positive" / "negative" / "unsure" (as
  in BAM!) or probabilities in [0, 1] (positive when >= `threshold`). Images are
  `<image_dir>/<id>.<ext>`. A row is used only when exactly one media attribute and exactly
  one content attribute are positive; other rows are counted in `info.unlabelled_rows`.

Records: domain = style name, class = content name, `style_id` = index of the style in the
sorted style list, `content_id` = `class_id`.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from pathlib import Path

from sketch_tf.data import schema
from sketch_tf.data.sources.common import (
    IMAGE_EXTENSIONS,
    WriteOptions,
    class_index,
    is_held_out,
    open_dataset,
)

#: Record kind this source writes.
KIND = schema.KIND_LABELLED_IMAGE


def _positive(value, threshold: float) -> bool:
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("positive", "pos", "true", "yes"):
            return True
        try:
            return float(v) >= threshold
        except ValueError:
            return False
    return float(value) >= threshold


def rows_from_sqlite(path, table=None, id_column="mid", threshold=0.5):
    """(id, style, content) of the single-labelled rows of a BAM!-like table, + skipped count."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sqlite file {path} is missing")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        cols_of = {t: [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')] for t in tables}
        if table is None:
            with_media = [t for t in tables if any(c.startswith("media_") for c in cols_of[t])]
            if not with_media:
                raise ValueError(f"{path}: no table with media_* columns (tables: {tables})")
            table = with_media[0]
        if table not in cols_of:
            raise ValueError(f"{path}: no table {table!r} (tables: {tables})")
        cols = cols_of[table]
        media = [c for c in cols if c.startswith("media_")]
        content = [c for c in cols if c.startswith("content_")]
        if id_column not in cols or not media or not content:
            raise ValueError(
                f"{path}:{table}: needs {id_column!r}, media_* and content_* columns, has {cols}"
            )
        sel = ", ".join(f'"{c}"' for c in [id_column, *media, *content])
        out, unlabelled = [], 0
        for row in con.execute(f'SELECT {sel} FROM "{table}" ORDER BY rowid'):
            m = [media[i] for i, v in enumerate(row[1 : 1 + len(media)]) if _positive(v, threshold)]
            c = [content[i] for i, v in enumerate(row[1 + len(media) :]) if _positive(v, threshold)]
            if len(m) == 1 and len(c) == 1:
                out.append((str(row[0]), m[0][len("media_") :], c[0][len("content_") :]))
            else:
                unlabelled += 1
        return out, unlabelled
    finally:
        con.close()


def _find_image(image_dir: Path, item_id: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        p = image_dir / f"{item_id}{ext}"
        if p.is_file():
            return p
    return image_dir / f"{item_id}.jpg"  # reported as missing by load_image_bytes


def prepare(
    root,
    out_dir,
    csv_path=None,
    sqlite_path=None,
    image_dir=None,
    table=None,
    id_column: str = "mid",
    threshold: float = 0.5,
    skip_bad: bool = False,
    shard_bytes: int = 128 << 20,
    group_by: str = "domain_class",
    overwrite: bool = False,
    test_fraction: float = 0.0,
) -> dict:
    """Convert a style-labelled collection into a `labelled_image` dataset (with
    `test_fraction` > 0: two, `<out_dir>/train` and `<out_dir>/test`, split by instance as
    `common.is_held_out`).

    Args:
      root: collection folder (default location of `labels.csv` and of the images).
      csv_path / sqlite_path: the label source (give at most one; default `<root>/labels.csv`).
      image_dir: image folder (default: CSV folder, or `root` for sqlite).
      table, id_column, threshold: BAM!-like sqlite options (see module docstring).
      skip_bad: skip missing / corrupt images (recorded in the manifest) instead of failing.
      test_fraction: in [0, 1): share of instances written to `<out_dir>/test`.

    Returns:
      the manifest dict (its `info` holds `styles` and `unlabelled_rows`); with
      test_fraction > 0 {"train": manifest, "test": manifest}.
    """
    root = Path(root)
    if csv_path and sqlite_path:
        raise ValueError("give csv_path or sqlite_path, not both")
    unlabelled = 0
    if sqlite_path:
        items, unlabelled = rows_from_sqlite(sqlite_path, table, id_column, threshold)
        img_dir = Path(image_dir) if image_dir else root
        entries = [(_find_image(img_dir, i), s, c, i) for i, s, c in items]
    else:
        csv_path = Path(csv_path) if csv_path else root / "labels.csv"
        if not csv_path.is_file():
            raise ValueError(f"style CSV {csv_path} is missing")
        img_dir = Path(image_dir) if image_dir else csv_path.parent
        entries = []
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            need = {"path", "style", "content"}
            if not need <= set(reader.fieldnames or []):
                raise ValueError(
                    f"{csv_path}: needs columns {sorted(need)}, has {reader.fieldnames}"
                )
            for line_no, row in enumerate(reader, 2):
                if not row["path"] or not row["style"] or not row["content"]:
                    raise ValueError(f"{csv_path}:{line_no}: empty path/style/content")
                p = img_dir / row["path"]
                entries.append((p, row["style"], row["content"], row.get("instance") or p.stem))
    if not entries:
        raise ValueError(f"{sqlite_path or csv_path}: no labelled rows")
    sid = class_index(e[1] for e in entries)
    cid = class_index(e[2] for e in entries)
    styles, contents = sorted(sid), sorted(cid)
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    opts = WriteOptions(skip_bad, shard_bytes, group_by, overwrite)
    parts = {"": None} if not test_fraction else {"train": False, "test": True}
    manifests = {part: _write(out_dir, part, held_out, entries, sid, cid, styles, contents,
                              root, img_dir, opts, unlabelled, sqlite_path or csv_path,
                              test_fraction)
                 for part, held_out in parts.items()}  # fmt: skip
    return manifests[""] if "" in manifests else manifests


def _write(out_dir, part, held_out, entries, sid, cid, styles, contents, root, img_dir, opts,
           unlabelled, label_file, test_fraction) -> dict:  # fmt: skip
    target = os.path.join(out_dir, part) if part else out_dir
    with open_dataset(target, KIND, contents, "style", root, opts) as (writer, policy):
        for path, style, content, instance in entries:
            if held_out is not None and is_held_out(content, instance, test_fraction) != held_out:
                continue
            image = policy.load_image(path)
            if image is None:
                continue
            rec = schema.encode_labelled_image(
                image,
                cid[content],
                content,
                style,
                instance,
                os.path.relpath(path, img_dir),
                style_id=sid[style],
                content_id=cid[content],
            )
            writer.write(rec, class_id=cid[content], class_name=content, domain=style)
        writer.info.update(styles=styles, unlabelled_rows=unlabelled, label_file=str(label_file))
        if held_out is not None:
            writer.info.update(split=part, test_fraction=float(test_fraction))
    return writer.manifest
