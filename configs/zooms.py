"""SketchZooms: multi-view zoom descriptors for correspondence between line drawings.

Variants (`--config=configs/zooms.py:<variant>`):

- `synthetic` (default): the embedded synthetic shape world, 256 px drawings, small_cnn (final
  map flattened) on three anti-aliased 32 px views, 32 points per pair, 9 seen categories for
  training, 3 unseen ones held out. On the 2-core CPU it trains in ~6 minutes; PCK@5% on
  held-out shapes 0.411-0.425 over three main-job runs (seen categories; raw patch 0.323,
  shape context 0.187) and 0.722-0.735 (unseen; 0.583 / 0.604). Tables, ablations and
  timings in docs/zooms.md:

    python train.py --config=configs/zooms.py:synthetic --workdir=runs/zooms
    python evaluate.py --workdir=runs/zooms
    python export.py --workdir=runs/zooms

  The records are rendered on first use by main_job.py, or by hand with
    python prepare_data.py --task=zooms --out=data/records/synthetic_zooms

- `synthetic_smoke`: the same flow on a tiny world and a few steps (main_job.py --smoke).
- `sketchzooms`: the original recipe (alexnet, 224 px views of 512 px drawings, jitter 0.3,
  +-45 deg, flip 0.5, Adam 1e-4, steps of 64 real triplets with the original's first-semi-hard
  of 5 same-category candidate negatives), records converted from the SketchZooms csv layout
  into `data/records/sketchzooms/{train,test}` (see data/README):
    python prepare_data.py --source=sketchzooms --root=<SketchZooms data> --split=train \
        --out=data/records/sketchzooms/train
"""

import ml_collections

from sketch_tf.train.config import add_run_sections, base_train_config

VARIANTS = ("synthetic", "synthetic_smoke", "sketchzooms")


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
    variant = arg or "synthetic"
    if variant not in VARIANTS:
        raise ValueError(f"configs/zooms.py: unknown variant {variant!r}; choose from {VARIANTS}")
    config = ml_collections.ConfigDict()
    config.task = "zooms"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.root = "data/records/synthetic_zooms"
    config.data.image_size = 256  # drawings are resized (aspect kept, white pad) to this side
    # Corresponding points sampled per pair per training step; they are also each other's
    # in-image negatives (16 -> 32: PCK@5% seen 0.392 -> 0.428, twice the step time).
    config.data.num_points = 32
    # Categories never seen in training, evaluated separately (names from the manifest).
    config.data.unseen_classes = ("guitar", "lamp", "mug")
    config.data.shuffle_buffer = 256
    # "pairs": B pairs x num_points points, negatives mined in the batch (CPU default);
    # "triplets": the original's steps of train.batch_size real triplets (sketchzooms variant).
    config.data.batching = "pairs"
    config.data.synthetic = ml_collections.ConfigDict(
        dict(image_size=256, n_per_category=30, test_fraction=0.2, pairs_per_category=30,
             n_points=64, seed=0)
    )  # fmt: skip

    # small_cnn (3 x [conv, BN, ReLU, pool]) on 32 px views, its 4x4x128 map *flattened* like
    # alexnet's (a global pool loses where in the view the strokes are: PCK@5% seen 0.287 ->
    # 0.373), dropout -> fc 512 -> fc 128.
    config.model = ml_collections.ConfigDict(
        dict(backbone="small_cnn", descriptor_dim=128,
             fusion="view_max", l2_normalize=False, dropout=0.3, head="auto", head_hidden=512,
             weights_path="", backbone_weights="", backbone_widths=(32, 64, 128),
             backbone_pooling="flatten", backbone_cut="", backbone_freeze_blocks=0)
    )  # fmt: skip
    # The pretrained trunk instead (measured in docs/zooms.md, not the default):
    # --config.model.backbone=vgg16_hed --config.model.backbone_cut=block3 \
    #   --config.model.backbone_freeze_blocks=3  (backbone_widths is small_cnn's only)

    # Zoom geometry, all in this section (DESIGN: half-sizes 100*z px on a 512 px sketch;
    # scaled with the image height, so the same part of the drawing is seen at 256 px; one
    # model view per zoom factor, each resampled to view_size px) and train-time jitter. The
    # original's augmentation (jitter 0.3, +-45 deg, flip p=0.5; the `sketchzooms` variant) cost
    # 4 points of PCK@5% on held-out synthetic shapes in our CPU budget (docs/zooms.md): a flip
    # makes the left and right counterparts of symmetric parts indistinguishable. `antialias`
    # area-averages before sampling: 180 px windows at 32 px views otherwise skip most stroke
    # pixels (+2 points PCK@5% on seen categories, docs/zooms.md).
    config.zooms = ml_collections.ConfigDict(
        dict(zooms=(1.8, 1.3, 0.8), view_size=32, base_half_size=100.0, reference_size=512.0,
             scale_jitter=0.15, max_rotation_deg=10.0, flip_prob=0.0, antialias=True)
    )  # fmt: skip

    # DESIGN: triplet, margin 1.0, non-squared Euclidean. The CPU default mines semi-hard
    # negatives (tfa's rule) among other points of the same category in the global batch; the
    # original's rule (mining="first_semi_hard": first semi-hard of num_candidates random
    # same-category points, else the last) needs data.batching="triplets" (sketchzooms
    # variant). kind="contrastive" is the alternative.
    config.loss = ml_collections.ConfigDict(
        dict(kind="triplet", mining="semi_hard", margin=1.0, distance="l2",
             contrastive_margin=1.0, num_candidates=5)
    )  # fmt: skip

    config.eval = ml_collections.ConfigDict(
        dict(max_pairs=60, matcher="nearest", curve_max=0.2, curve_steps=41, cmc_max_rank=20,
             raw_patch_size=64, raw_patch_out=8, batch_points=256)
    )  # fmt: skip

    config.serving = ml_collections.ConfigDict(
        dict(max_dense_points=1024, dilate_px=2, chunk_points=256, ink_threshold=0.5)
    )  # fmt: skip

    config.train = base_train_config()
    config.train.update(
        batch_size=8, num_steps=500, learning_rate=1e-3, log_every=25, checkpoint_every=100,
        lr_schedule="cosine", warmup_steps=20,
    )  # fmt: skip

    if variant == "synthetic_smoke":
        config.data.num_points = 8
        config.data.synthetic.update(image_size=128, n_per_category=4, pairs_per_category=3)
        config.data.image_size = 128
        config.eval.max_pairs = 6
        config.serving.max_dense_points = 128
        config.train.update(num_steps=4, batch_size=4, log_every=1, warmup_steps=0)
    elif variant == "sketchzooms":
        config.data.root = "data/records/sketchzooms"
        config.data.image_size = 512
        # The original step: 64 real triplets (one point each, converted records hold one
        # point), negatives = first semi-hard of 5 random points of the same category.
        config.data.batching = "triplets"
        config.loss.mining = "first_semi_hard"
        config.data.unseen_classes = ()
        config.model.update(backbone="alexnet", dropout=0.5, head_hidden=0, backbone_pooling="")
        config.zooms.view_size = 224
        # The original samples its views without anti-aliasing (a 360 px window at 224 px is
        # only 1.6 source px per view px, so area-shrinking would be a no-op there anyway).
        config.zooms.update(scale_jitter=0.3, max_rotation_deg=45.0, flip_prob=0.5, antialias=False)
        config.train.update(
            batch_size=64, num_steps=20000, learning_rate=1e-4, log_every=20,
            checkpoint_every=1000, lr_schedule="constant", warmup_steps=0,
        )  # fmt: skip
        config.eval.max_pairs = 200
    return add_run_sections(config)
