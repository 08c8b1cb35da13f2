"""Matches points between two sketches with a trained SketchZooms model.

  python match.py --workdir=runs/zooms --image_a=a.png --image_b=b.png --output=runs/match/ab
  python match.py --workdir=runs/zooms --image_a=a.png --image_b=b.png \
      --points_a=a_pts.npy --points_b=b_pts.npy --method=hungarian --output=runs/match/ab

Points: (x, y) pixels of the input images as [N, 2] .npy files, or (default) a Poisson-disk
sample with --radius (5 px, the original's) inside the silhouette mask --mask_a / --mask_b
(dark shape on white, like the SketchZooms example `*_mask.png`), or inside the filled
silhouette of the strokes when no mask is given. Methods: nn (nearest neighbour of every A point),
mutual_nn, hungarian (one-to-one, scipy), sinkhorn (balanced OT plan + mutual argmax).
Writes <output>.json (every match: indices, coordinates, descriptor distance) and <output>.png
(the drawings side by side with one coloured line per match).

With --reference_a/--reference_b (.npy descriptors [N, D] of the given points from another
model, e.g. the original SketchZooms' `*_sketchzooms_alexnet_triplet.npy`) it also prints and
stores how our mutual-NN matches agree with the reference's ("reference_agreement").
"""

import os

from absl import app, flags

from sketch_tf import cli

_CONFIG = cli.define_config_flag()
_WORKDIR = cli.define_workdir_flag("Trained zooms run folder (required).")
_IMAGE_A = flags.DEFINE_string("image_a", None, "First sketch (PNG/JPEG).")
_IMAGE_B = flags.DEFINE_string("image_b", None, "Second sketch (PNG/JPEG).")
_POINTS_A = flags.DEFINE_string("points_a", None, "Optional [N, 2] (x, y) .npy points of A.")
_POINTS_B = flags.DEFINE_string("points_b", None, "Optional [N, 2] (x, y) .npy points of B.")
_RADIUS = flags.DEFINE_float("radius", 5.0, "Poisson-disk radius (px) when points are not given.")
_MASK_A = flags.DEFINE_string("mask_a", None, "Optional silhouette mask of A (dark = inside).")
_MASK_B = flags.DEFINE_string("mask_b", None, "Optional silhouette mask of B (dark = inside).")
_METHOD = flags.DEFINE_enum(
    "method", "mutual_nn", ["nn", "mutual_nn", "hungarian", "sinkhorn"], "Matcher."
)
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix: writes <output>.json and .png.")
_REF_A = flags.DEFINE_string("reference_a", None, "Optional [Na, D] .npy reference descriptors.")
_REF_B = flags.DEFINE_string("reference_b", None, "Optional [Nb, D] .npy reference descriptors.")


def main(argv):
    cli.check_args(
        argv, workdir=_WORKDIR.value, image_a=_IMAGE_A.value, image_b=_IMAGE_B.value,
        output=_OUTPUT.value,
    )  # fmt: skip
    for name, flag in (("image_a", _IMAGE_A), ("image_b", _IMAGE_B), ("points_a", _POINTS_A),
                       ("points_b", _POINTS_B), ("reference_a", _REF_A),
                       ("reference_b", _REF_B), ("mask_a", _MASK_A),
                       ("mask_b", _MASK_B)):  # fmt: skip
        if flag.value and not os.path.isfile(flag.value):
            cli.fail(f"--{name}: {flag.value} does not exist")
    if bool(_REF_A.value) != bool(_REF_B.value):
        cli.fail("--reference_a and --reference_b go together")
    if _REF_A.value and not (_POINTS_A.value and _POINTS_B.value):
        cli.fail("--reference_a/--reference_b describe given points: pass --points_a/--points_b")
    if _RADIUS.value <= 0:
        cli.fail(f"--radius must be > 0, got {_RADIUS.value}")
    config = cli.validated_config(_CONFIG.value, _WORKDIR.value)

    from sketch_tf.families import get_task_class
    from sketch_tf.families.zooms import match as zooms_match
    from sketch_tf.families.zooms.task import ZoomsTask

    if not issubclass(get_task_class(config.task), ZoomsTask):
        cli.fail(f"match.py needs a zooms run; {_WORKDIR.value} is a {config.task!r} run")
    try:
        pa = zooms_match.load_points(_POINTS_A.value) if _POINTS_A.value else None
        pb = zooms_match.load_points(_POINTS_B.value) if _POINTS_B.value else None
    except ValueError as e:
        cli.fail(str(e))
    reference = None
    if _REF_A.value:
        import numpy as np

        try:
            reference = (np.load(_REF_A.value), np.load(_REF_B.value))
        except (OSError, ValueError) as e:
            cli.fail(f"--reference_a/--reference_b: not readable .npy arrays ({e})")
    run = cli.load_run_or_fail(config, _WORKDIR.value)
    try:
        result = zooms_match.run_match(
            run.task, run.models["zooms"], _IMAGE_A.value, _IMAGE_B.value, _OUTPUT.value,
            method=_METHOD.value, points_a=pa, points_b=pb, radius=_RADIUS.value,
            reference=reference, mask_a=_MASK_A.value, mask_b=_MASK_B.value,
        )  # fmt: skip
    except ValueError as e:
        cli.fail(str(e))
    print(
        f"{len(result['matches'])} matches ({_METHOD.value}) between {result['num_points_a']} "
        f"and {result['num_points_b']} points -> {_OUTPUT.value}.json, {_OUTPUT.value}.png"
    )
    if reference is not None:
        agree = result["reference_agreement"]
        print(
            f"reference: {agree['reference']} mutual-NN matches, ours {agree['ours']}, common "
            f"{agree['common']}: agreement {agree['agreement']:.3f}, precision "
            f"{agree['precision']:.3f}, same nearest neighbour {agree['nn_agreement']:.3f} "
            f"(chance {agree['chance_nn']:.3f})"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
