"""SketchZooms: multi-view zoom descriptors for correspondence between line drawings.

Variants (`--config=configs/zooms.py:<variant>`):

- `synthetic` (default): the embedded synthetic shape world, 256 px drawings, small_cnn of
  widths (16, 32, 64) (final map flattened) on three anti-aliased 32 px views, steps of 4
  pairs x 32 points, 9 seen categories for training, 3 unseen ones held out; 15.6 GFLOP per
  training step (7.8 TFLOP in all), about 125 s of CPU time for its 500 steps on the 2-core
  AVX-512 CPU. PCK@5% on held-out shapes 0.379-0.402 over seeds 0-2 (seen categories; raw
  patch 0.323, shape context 0.187) and 0.715-0.729 (unseen; 0.583 / 0.604). Tables,
  ablations and timings in docs/zooms.md:

    python train.py --config=configs/zooms.py:synthetic --workdir=runs/zooms
    python evaluate.py --workdir=runs/zooms
    python export.py --workdir=runs/zooms

  The records are rendered on first use by main_job.py, or by hand with
    python prepare_data.py --task=zooms --out=data/records/synthetic_zooms

- `synthetic_smoke`: the same flow on a tiny world and a few steps (main_job.py --smoke).
- `sketchzooms` (GPU): the original recipe (alexnet from ImageNet, fine-tuned end to end,
  224 px views of 512 px drawings, jitter 0.3, +-45 deg, flip 0.5, Adam 1e-4, steps of 64 real
  triplets with the original's first-semi-hard of 5 same-category candidate negatives),
  records converted from the SketchZooms csv layout into `data/records/sketchzooms/{train,test}`
  (see data/README):
    python prepare_data.py --source=sketchzooms --root=<SketchZooms data> --split=train \
        --out=data/records/sketchzooms/train
    python train.py --config=configs/zooms.py:sketchzooms --workdir=runs/zooms_sketchzooms
"""

import ml_collections

from sketch_tf.families.zooms.config import defaults
from sketch_tf.train.config_sections import config_getter, variants_by_name


def synthetic(config: ml_collections.ConfigDict) -> None:
    """The defaults as they are: the CPU recipe on the synthetic world (module docstring)."""


def synthetic_smoke(config: ml_collections.ConfigDict) -> None:
    """main_job.py --smoke: the same flow on a tiny world and a few steps."""
    config.data.num_points = 8
    config.data.synthetic.update(
        image_size=128, n_per_category=4, pairs_per_category=3, test_pairs_per_category=3
    )
    config.data.image_size = 128
    config.eval.max_pairs = 6
    config.serving.max_dense_points = 128
    config.train.update(num_steps=4, batch_size=4, log_every=1, warmup_steps=0)


def sketchzooms(config: ml_collections.ConfigDict) -> None:
    """The original recipe on records converted from the SketchZooms csv layout (module
    docstring); a GPU job (20k steps of 64 triplets x 3 views of 224 px through AlexNet).

    The trunk starts from ImageNet as the paper's does (Navarro et al., Computer Graphics
    Forum 40(1), 2021: torchvision's ImageNet AlexNet, fine-tuned end to end):
    `backbone_weights="imagenet"` fetches torchvision's alexnet-owt-7be5be79.pth (244 MB)
    into the Keras cache once and converts it (docs/weights.md); nothing is frozen. One
    departure: the model normalises the [0, 1] views with the ImageNet mean / std those
    weights were trained with; the public code feeds them unnormalised. The paper reports its
    correspondence accuracy as curves over pixel thresholds and CMC curves (its figures),
    not as one number we could check here; our `pck@5%` is one point of such a curve.
    Converted original checkpoints (sketch_tf.tools.convert_torch_sketchzooms) load through
    `model.weights_path` instead, built with `--config.model.backbone_weights=`.
    """
    config.data.root = "data/records/sketchzooms"
    config.data.image_size = 512
    # The original step: 64 real triplets (one point each, converted records hold one
    # point), negatives = first semi-hard of 5 random points of the same category.
    config.data.batching = "triplets"
    config.loss.mining = "first_semi_hard"
    config.data.unseen_classes = ()
    config.model.update(
        backbone="alexnet", backbone_weights="imagenet", dropout=0.5, head_hidden=0,
        backbone_pooling="",
    )  # fmt: skip
    config.zooms.view_size = 224
    # The original samples its views without anti-aliasing (a 360 px window at 224 px is
    # only 1.6 source px per view px, so area-shrinking would be a no-op there anyway).
    config.zooms.update(scale_jitter=0.3, max_rotation_deg=45.0, flip_prob=0.5, antialias=False)
    config.train.update(
        batch_size=64, num_steps=20000, learning_rate=1e-4, log_every=20,
        checkpoint_every=1000, lr_schedule="constant", warmup_steps=0,
    )  # fmt: skip
    config.eval.max_pairs = 200


#: Variant name -> function that edits `defaults()` in place.
VARIANTS = variants_by_name(synthetic, synthetic_smoke, sketchzooms)
get_config = config_getter("zooms", defaults, VARIANTS)
