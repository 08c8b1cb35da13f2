"""Retrieves the top-k gallery images of a query sketch (and, for style, an exemplar).

  # A trained run against a records folder (embedded now; --save_index keeps the index):
  python retrieve.py --workdir=runs/<run> --gallery=data/records/photos --query=sketch.png \\
      --k=10 --out=grid.png --save_index=runs/<run>/index
  # ... against a saved index (refused when it was built by another model):
  python retrieve.py --workdir=runs/<run> --index=runs/<run>/index --query=sketch.png
  # An export whose `retrieve` signature holds its gallery (export.py --gallery):
  python retrieve.py --export_dir=runs/<run>/export --query=sketch.png --k=5
  # Style-aware SBIR: a sketch for the content, an exemplar for the depiction style:
  python retrieve.py --workdir=runs/<style run> --gallery=... --query=sketch.png \\
      --exemplar=painting.jpg --alpha=0.7

Prints rank, score, class and key (the gallery image's path below its source root) of each
result and, with --out, writes the grid (query, exemplar, results; frames green / red against
--query_class when given). `--index_factory` builds a faiss index instead of exact search
("IVF4096,Flat", "IVF4096,PQ32", "HNSW32" for millions of images; approximate).
"""

from absl import app, flags

from sketch_tf import cli

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained run folder (or give --export_dir).")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Export base or version folder whose `retrieve` holds its gallery."
)
_GALLERY = flags.DEFINE_string("gallery", None, "Labelled-image records folder to search.")
_INDEX = flags.DEFINE_string("index", None, "Index folder saved with --save_index.")
_SAVE_INDEX = flags.DEFINE_string("save_index", None, "Save the index built from --gallery.")
_FACTORY = flags.DEFINE_string(
    "index_factory", None, "faiss index factory string (default: exact search)."
)
_QUERY = flags.DEFINE_string("query", None, "Query sketch image (PNG / JPEG).")
_EXEMPLAR = flags.DEFINE_string("exemplar", None, "Style exemplar image (style retrieval only).")
_ALPHA = flags.DEFINE_float("alpha", None, "Structure weight in [0, 1] (style retrieval only).")
_K = flags.DEFINE_integer("k", 10, "Results to return.")
_OUT = flags.DEFINE_string("out", None, "Write the result grid to this PNG.")
_QUERY_CLASS = flags.DEFINE_string("query_class", None, "The query's class, to colour the grid.")


def main(argv):
    cli.check_args(argv, query=_QUERY.value)
    if (_WORKDIR.value is None) == (_EXPORT_DIR.value is None):
        cli.fail("give exactly one of --workdir (a trained run) and --export_dir (an export)")
    if _WORKDIR.value is not None and (_GALLERY.value is None) == (_INDEX.value is None):
        cli.fail("--workdir: give exactly one of --gallery (records) and --index (saved index)")
    if _EXPORT_DIR.value is not None and (_GALLERY.value or _INDEX.value or _SAVE_INDEX.value):
        cli.fail(
            "--export_dir searches the gallery stored in the export; use --workdir with "
            "--gallery / --index to search another one"
        )
    if _SAVE_INDEX.value and not _GALLERY.value:
        cli.fail("--save_index needs --gallery (the index is built from it)")
    if _K.value < 1:
        cli.fail(f"--k must be >= 1, got {_K.value}")
    if _ALPHA.value is not None and not 0.0 <= _ALPHA.value <= 1.0:
        cli.fail(f"--alpha must be in [0, 1], got {_ALPHA.value}")

    from sketch_tf import search
    from sketch_tf.data.images import load_image

    try:
        query = load_image(_QUERY.value)
        exemplar = None if _EXEMPLAR.value is None else load_image(_EXEMPLAR.value)
    except ValueError as err:
        cli.fail(f"--query / --exemplar: {err}")
    try:
        if _EXPORT_DIR.value is not None:
            result = search.query_export(_EXPORT_DIR.value, query, _K.value, exemplar, _ALPHA.value)
            print(f"export: {result['export']}")
        else:
            run = cli.load_run_or_fail(_CONFIG.value, _WORKDIR.value)
            if _GALLERY.value is not None:
                index = search.build_index(run, _GALLERY.value, _FACTORY.value)
                if _SAVE_INDEX.value:
                    print(f"index saved: {index.save(_SAVE_INDEX.value)}")
            else:
                index = search.load_index(run, _INDEX.value)
            result = search.query_run(run, index, query, _K.value, exemplar, _ALPHA.value)
    except (FileNotFoundError, ValueError) as err:
        cli.fail(str(err))
    if len(result["rows"]) < _K.value:
        print(f"note: {len(result['rows'])} results (the gallery holds fewer than --k={_K.value})")
    print(f"{'rank':>4}  {'score':>9}  {'class':<16} key")
    for rank, (score, label, key) in enumerate(
        zip(result["scores"], result["labels"], result["keys"], strict=True), 1
    ):
        print(f"{rank:>4}  {score:>9.4f}  {label:<16} {key}")
    if _OUT.value:
        from sketch_tf.eval.plots import save_png

        grid = search.result_grid(result, query, exemplar, _QUERY_CLASS.value)
        print(f"grid: {save_png(grid, _OUT.value)}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
