"""The zooms config: its defaults, their checks, and what older run folders keep.

`defaults()` is the complete config (every key the task reads, with a comment saying what it
means); configs/zooms.py edits it into variants. `validate(config)` lists the problems of a
config (`ZoomsTask.validate_config`). `RENAMED_KEYS`, `DERIVED_KEYS` and `OLD_RUN_VALUES` are
what `sketch_tf.train.config.migrate` does to a stored config.json of an older version.
"""

from __future__ import annotations

import ml_collections

from sketch_tf.train.config_sections import add_run_sections, base_train_config, old_key_problems

LOSS_KINDS = ("triplet", "contrastive")
#: In-batch mining over pair batches, or the original's per-triplet candidates.
MINING = ("semi_hard", "hard", "first_semi_hard")
BATCHING = ("pairs", "triplets")

#: Sub-trees whose keys are the user's (the synthetic world's rendering options, passed to
#: `prepare_synthetic` as they are): `migrate` fills them only when absent as a whole.
FREE_FORM = ("data.synthetic",)
#: Keys renamed in this family with their meaning unchanged (old -> new): the zoom geometry
#: became one section in b534195 (the generic data.unseen_categories is in `train.config`).
RENAMED_KEYS = {"model.view_size": "zooms.view_size"}
#: Keys whose value is now computed from others: old key -> (what gives it, its value). The
#: code before b534195 required model.num_views == len(zooms.zooms), so `migrate` drops it.
DERIVED_KEYS = {"model.num_views": ("len(zooms.zooms)", lambda config: len(config.zooms.zooms))}
#: The value a run folder whose config.json lacks the key keeps, where the code read the
#: absent key with a fallback that differs from `defaults()`: what that run trained with.
#: The other keys added since the first version (data.batching, loss.num_candidates,
#: model.backbone_cut, backbone_freeze_blocks) were read with a fallback equal to their
#: default.
OLD_RUN_VALUES = {
    # Added (default True) in 1375de3; read as False when absent: no area averaging before
    # sampling, what those runs trained with.
    "zooms.antialias": False,
    # Added (default "flatten") in 1375de3; read as "" when absent: no pooling argument, i.e. the
    # backbone's own pooling (small_cnn: "avg").
    "model.backbone_pooling": "",
    # Added (default (32, 64, 128)) in d38681b; read as () when absent: no widths argument, i.e.
    # small_cnn's own widths (32, 64, 128, 256).
    "model.backbone_widths": (),
}


def defaults() -> ml_collections.ConfigDict:
    """The complete zooms config: the CPU recipe on the synthetic world (the `synthetic`
    variant of configs/zooms.py), which the other variants edit."""
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
    # The test split renders 10 pairs per category (issue 26): evaluation reads 60 of the 90
    # seen pairs (6 of the 9 categories) and the 30 unseen ones (all 3), where 30 per category
    # left 240 of 360 test pairs unread and evaluated only 2 categories of each group.
    config.data.synthetic = ml_collections.ConfigDict(
        dict(image_size=256, n_per_category=30, test_fraction=0.2, pairs_per_category=30,
             test_pairs_per_category=10, n_points=64, seed=0)
    )  # fmt: skip

    # small_cnn (3 x [conv, BN, ReLU, pool]) on 32 px views, its 4x4x64 map *flattened* like
    # alexnet's (a global pool loses where in the view the strokes are: PCK@5% seen 0.287 ->
    # 0.373), dropout -> fc 512 -> fc 128. Widths (16, 32, 64): 31 GFLOP per training step of
    # 8 pairs against 105 for (32, 64, 128), PCK@5% within seed noise; 24 px views cost 4 points on
    # seen categories (issue 26, docs/zooms.md).
    config.model = ml_collections.ConfigDict(
        dict(backbone="small_cnn", descriptor_dim=128,
             fusion="view_max", l2_normalize=False, dropout=0.3, head="auto", head_hidden=512,
             weights_path="", backbone_weights="", backbone_widths=(16, 32, 64),
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
    # 4 pairs x 32 points per step (8 before issue 26's second cut): 15.6 GFLOP per step, half
    # the training compute of 8 pairs, PCK@5% seen -2.2 points (3-seed means, ranges touch),
    # unseen -0.7. Halving the steps instead (250, LR schedule refitted) or the points (16)
    # cost 2-5 points: the number of updates matters more than their batch (docs/zooms.md).
    config.train.update(
        batch_size=4, num_steps=500, learning_rate=1e-3, log_every=25, checkpoint_every=100,
        lr_schedule="cosine", warmup_steps=20,
    )  # fmt: skip
    return add_run_sections(config)


def validate(config: ml_collections.ConfigDict) -> list[str]:
    """Problems in the zooms sections of `config` (empty when valid); every key present
    (`sketch_tf.train.config.validate_config` checks that first)."""
    # Imported here: configs/zooms.py imports this module for `defaults`, which must stay
    # cheap (no TensorFlow) for the absl config flags.
    from sketch_tf import losses
    from sketch_tf.eval.correspondence import MATCHERS
    from sketch_tf.models.backbones import (
        BACKBONES,
        HED_CUTS,
        HED_POOLINGS,
        VGG16_TRUNKS,
        backbone_weights_problems,
    )
    from sketch_tf.models.layers import FUSION_MODES

    p = old_key_problems(config, RENAMED_KEYS, DERIVED_KEYS)
    m, z, loss, data = config.model, config.zooms, config.loss, config.data
    if m.backbone not in BACKBONES:
        p.append(f"model.backbone must be one of {sorted(BACKBONES)}, got {m.backbone!r}")
    poolings = {"small_cnn": ("avg", "max", "flatten"), **dict.fromkeys(VGG16_TRUNKS, HED_POOLINGS)}
    if m.backbone_pooling and m.backbone not in poolings:
        p.append(
            f"model.backbone_pooling={m.backbone_pooling!r} applies to small_cnn and "
            "the vgg16 trunks only (the torchvision layouts keep their own pooling); set it to '' "
            f"for {m.backbone!r}"
        )
    elif m.backbone_pooling and m.backbone_pooling not in poolings[m.backbone]:
        p.append(
            f"model.backbone_pooling must be one of {poolings[m.backbone]} or '' for "
            f"{m.backbone}, got {m.backbone_pooling!r}"
        )
    for key in ("backbone_cut", "backbone_freeze_blocks"):
        if m[key] and m.backbone not in VGG16_TRUNKS:
            p.append(f"model.{key} applies to {' / '.join(VGG16_TRUNKS)} only, got {m[key]!r}")
    if m.backbone_cut and m.backbone_cut not in HED_CUTS:
        p.append(f"model.backbone_cut must be one of {HED_CUTS} or '', got {m.backbone_cut!r}")
    p.extend(backbone_weights_problems(m.backbone, m.backbone_weights))
    if m.fusion not in FUSION_MODES:
        p.append(f"model.fusion must be one of {FUSION_MODES}, got {m.fusion!r}")
    if not (isinstance(z.view_size, int) and z.view_size >= 16):
        p.append(f"zooms.view_size must be an integer >= 16, got {z.view_size!r}")
    if not tuple(z.zooms):
        p.append("zooms.zooms must list at least one zoom factor")
    if any(float(v) <= 0 for v in tuple(z.zooms)):
        p.append(f"zooms.zooms must be positive, got {tuple(z.zooms)}")
    elif not 0 <= z.scale_jitter < min(z.zooms):
        p.append(f"zooms.scale_jitter must be in [0, min(zooms.zooms)), got {z.scale_jitter}")
    if not 0 <= z.max_rotation_deg <= 180:
        p.append(f"zooms.max_rotation_deg must be in [0, 180], got {z.max_rotation_deg}")
    if not 0 <= z.flip_prob <= 1:
        p.append(f"zooms.flip_prob must be in [0, 1], got {z.flip_prob}")
    if loss.kind not in LOSS_KINDS:
        p.append(f"loss.kind must be one of {LOSS_KINDS}, got {loss.kind!r}")
    if loss.mining not in MINING:
        p.append(f"loss.mining must be one of {MINING}, got {loss.mining!r}")
    if loss.distance not in losses.DISTANCES:
        p.append(f"loss.distance must be one of {losses.DISTANCES}, got {loss.distance!r}")
    if loss.margin <= 0:
        p.append(f"loss.margin must be > 0, got {loss.margin}")
    batching = data.batching
    if batching not in BATCHING:
        p.append(f"data.batching must be one of {BATCHING}, got {batching!r}")
    elif (batching == "triplets") != (loss.mining == "first_semi_hard"):
        p.append(
            "data.batching='triplets' goes with loss.mining='first_semi_hard' (the original's "
            f"candidate negatives) and only with it; got batching={batching!r}, "
            f"mining={loss.mining!r}"
        )
    elif batching == "triplets" and loss.kind != "triplet":
        p.append("data.batching='triplets' trains loss.kind='triplet' only")
    if not (isinstance(loss.num_candidates, int) and loss.num_candidates >= 1):
        p.append(f"loss.num_candidates must be an integer >= 1, got {loss.num_candidates!r}")
    if not (isinstance(data.num_points, int) and data.num_points >= 2):
        p.append(f"data.num_points must be an integer >= 2, got {data.num_points!r}")
    if not (isinstance(data.image_size, int) and data.image_size >= 32):
        p.append(f"data.image_size must be an integer >= 32, got {data.image_size!r}")
    if config.eval.matcher not in MATCHERS:
        p.append(f"eval.matcher must be one of {sorted(MATCHERS)}, got {config.eval.matcher!r}")
    if config.eval.max_pairs < 1:
        p.append(f"eval.max_pairs must be >= 1, got {config.eval.max_pairs}")
    if config.serving.max_dense_points < 1:
        p.append(f"serving.max_dense_points must be >= 1, got {config.serving.max_dense_points}")
    return p
