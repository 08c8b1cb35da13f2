"""Real dataset layouts -> sharded TFRecords (one registry, one entry point).

`SOURCES` maps a source name to its `prepare(root, out_dir, **options) -> manifest` builder;
`prepare(source_name, root, out_dir, **options)` is what `prepare_data.py --source=...` calls.

`quickdraw` and `folders` split their conversion into a plan (`<module>.plan(root, ...)`, a
`common.SourcePlan`: work units, their items, one item -> one record); the single-process
`prepare` and the Apache Beam pipeline (`sketch_tf.data.beam.prepare_beam`) both run it.
`qmul` is a plan too, written by `write_plan` only (its arrays are read whole, to check them
before anything is written).

Options common to every source: `skip_bad` (skip and count bad inputs instead of failing),
`shard_bytes`, `overwrite`. Per source (see each module's `prepare` docstring):

- `folders`: `layout` ("auto" | "domain_class" | "class"), `domain` (for the class layout),
  `domains`, `tx_dir` (Sketchy variant, default tx_000000000000), `allow_missing`,
  `verify_images`, `max_per_class`, `group_by`.
- `quickdraw`: `size`, `line_width`, `margin`, `npz_split`, `max_per_class`, `categories`,
  `group_by`.
- `sketchzooms`: `split` ("train" | "test"), `categories`.
- `qmul`: QMUL Shoes / Chairs V1 `.mat` arrays (fine-grained SBIR): `category`, `split`
  ("train" -> train/ + val/ carved by object with `val_fraction`, `val_seed`; "test" -> test/),
  `group_by`; returns {part: manifest}.
- `style`: `csv_path` or `sqlite_path`, `image_dir`, `table`, `id_column`, `threshold`,
  `group_by`.
"""

from __future__ import annotations

from sketch_tf.data.sources import folders, qmul, quickdraw, sketchzooms, style
from sketch_tf.data.sources.common import BadInputError

SOURCES = {
    "folders": folders.prepare,
    "qmul": qmul.prepare,
    "quickdraw": quickdraw.prepare,
    "sketchzooms": sketchzooms.prepare,
    "style": style.prepare,
}

__all__ = ["SOURCES", "BadInputError", "prepare"]


def prepare(source_name: str, root, out_dir, **options) -> dict:
    """Convert the dataset at `root` with source `source_name` into `out_dir`.

    Returns:
      the written manifest dict; for a source writing several parts (folders' and style's
      `test_fraction`, qmul), {part: manifest}.

    Raises:
      ValueError for an unknown source or bad options/layout; BadInputError naming the file for
      a bad input when `skip_bad` is not set.
    """
    if source_name not in SOURCES:
        raise ValueError(f"unknown source {source_name!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[source_name](root, out_dir, **options)
