"""The fg_sbir config: its defaults, their checks, and what older run folders keep.

`defaults()` is the complete config (every key the task reads, with a comment saying what it
means); configs/fg_sbir.py edits it into variants. `validate(config)` lists the problems of a
config (`FgSbirTask.validate_config`). The task read every key without a fallback from its
first version on, so `migrate` fills an older config.json's missing keys with the defaults
(a run folder written before `model.backbone` existed, say).
"""

from __future__ import annotations

import ml_collections

from sketch_tf.train.config_sections import (
    add_run_sections,
    base_train_config,
    bool_problems,
    retrieval_config,
    root_problems,
)

MINING_MODES = ("hard", "semi_hard", "all", "random", "none")
FLIP_MODES = ("pair", "none")
METRICS = ("euclidean", "cosine")

#: Sub-trees whose keys are the user's (backbone arguments): `migrate` fills them only when
#: absent as a whole.
FREE_FORM = ("model.backbone_kwargs",)
#: Keys renamed in this family (old -> new); the generic ones are in `train.config`.
RENAMED_KEYS: dict[str, str] = {}
#: Keys whose value is now computed from others (none in this family).
DERIVED_KEYS: dict = {}
#: Values an older config.json keeps where they differ from the defaults: none (no key of
#: this family was ever read with a fallback).
OLD_RUN_VALUES: dict = {}


def defaults() -> ml_collections.ConfigDict:
    """The complete fg_sbir config: the CPU recipe on QMUL Shoes (frozen, cached HED blocks
    1-4 and a trained head) that every variant of configs/fg_sbir.py edits."""
    # The test split "val" is carved from the training files ("test" when shared).
    config = retrieval_config("fg_sbir", root="data/records/qmul_shoes", test_split="val")
    config.data.image_domain = "edge"  # the gallery side: QMUL's edge maps ("photo" if given)
    # The gallery images are line drawings (edge maps): preprocessed and described (HOG of
    # their ink) like sketches. False for photos (HOG of their Sobel edges).
    config.data.gallery_drawings = True
    config.data.classes = ()  # () = every class of the records
    config.data.image_size = 256
    # Training crop side in pixels, a multiple of the split point's stride (16 with
    # model.frozen_blocks=4); = image_size: no crop. The original: 225 of 256.
    config.data.crop_size = 224
    config.data.flip = "pair"  # pair: sketch and images of a row mirrored together | none
    config.data.feature_cache = True
    config.data.cache_dir = ""  # "" = beside the records

    config.model = ml_collections.ConfigDict()
    # Any sketch_tf.models.backbones name; only the VGG16 trunks (vgg16_hed: HED's weights;
    # vgg16: ImageNet's with backbone_weights="imagenet") have a split point and give the
    # frozen + cached CPU recipe; the others train whole from the image.
    config.model.backbone = "vgg16_hed"
    config.model.backbone_kwargs = ml_collections.ConfigDict()
    config.model.trunk_blocks = 4
    config.model.frozen_blocks = 4
    config.model.projection_dim = 128
    config.model.hidden = ()
    config.model.grid = 4
    config.model.feature_scale = 0.01
    # One head for sketches and edge maps (both line drawings); False: a head per side.
    config.model.shared = True
    # "" (the backbone's own: HED's for vgg16_hed), "imagenet" (docs/weights.md) or a file.
    config.model.backbone_weights = ""

    config.loss = ml_collections.ConfigDict()
    config.loss.margin = 0.2
    config.loss.mining = "semi_hard"  # in-batch: hard | semi_hard | all | random | none
    config.loss.annotated_weight = 0.0

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 32
    config.eval.metric = "euclidean"  # on unit embeddings: the cosine ranking
    config.eval.multi_crop = False  # True: mean of the 10 crop / flip views
    config.eval.ks = (1, 5, 10)
    config.eval.baselines = ("hog", "raw_pixels")
    config.eval.grid_queries = 8
    config.eval.grid_top_k = 6

    config.train = base_train_config()
    config.train.update(
        batch_size=32,
        num_steps=600,
        steps_per_epoch=100,
        learning_rate=1e-3,
        log_every=50,
        checkpoint_every=300,
    )
    add_run_sections(config)
    config.ablations.no_flip = ml_collections.ConfigDict({"data": {"flip": "none"}})
    config.ablations.annotated = ml_collections.ConfigDict({"loss": {"annotated_weight": 1.0}})
    config.ablations.separate_towers = ml_collections.ConfigDict({"model": {"shared": False}})
    config.ablations.hard_mining = ml_collections.ConfigDict({"loss": {"mining": "hard"}})
    config.ablations.all_mining = ml_collections.ConfigDict({"loss": {"mining": "all"}})
    return config


def validate(config: ml_collections.ConfigDict) -> list[str]:
    """Problems in the fg_sbir sections of `config` (empty when valid); every key present
    (`sketch_tf.train.config.validate_config` checks that first)."""
    # Imported here: configs/fg_sbir.py imports this module for `defaults`, which must stay
    # cheap (no TensorFlow) for the absl config flags.
    from sketch_tf.eval.baselines import baseline_names_problems
    from sketch_tf.models import fg_sbir as fg_models
    from sketch_tf.models.backbones import BACKBONES, backbone_weights_problems

    d, m, loss, e = config.data, config.model, config.loss, config.eval
    p = root_problems(d)
    if d.sketch_domain == d.image_domain:
        p.append(f"data.sketch_domain and data.image_domain are both {d.image_domain!r}")
    p.extend(bool_problems(d, "data", ("gallery_drawings", "feature_cache")))
    if m.backbone not in BACKBONES:
        p.append(f"model.backbone must be one of {sorted(BACKBONES)}, got {m.backbone!r}")
    elif m.backbone not in fg_models.SPLIT_BACKBONES and (
        m.frozen_blocks != 0 or d.feature_cache or d.crop_size != d.image_size
    ):
        p.append(
            f"model.backbone={m.backbone!r} is trained whole from the image (only "
            f"{fg_models.SPLIT_BACKBONES} have a split point): it needs model.frozen_blocks=0,"
            " data.feature_cache=False and data.crop_size = data.image_size (its input "
            f"size), got {m.frozen_blocks}, {d.feature_cache}, {d.crop_size}"
        )
    if m.trunk_blocks not in (4, 5):
        p.append(f"model.trunk_blocks must be 4 or 5, got {m.trunk_blocks!r}")
    elif not isinstance(m.frozen_blocks, int) or not 0 <= m.frozen_blocks <= m.trunk_blocks:
        p.append(f"model.frozen_blocks must be in 0..model.trunk_blocks, got {m.frozen_blocks!r}")
    else:
        stride = fg_models.split_stride(m.frozen_blocks)
        size, crop = d.image_size, d.crop_size
        if not isinstance(size, int) or size < 32:
            p.append(f"data.image_size must be an integer >= 32, got {size!r}")
        elif not isinstance(crop, int) or not 0 < crop <= size or crop % stride:
            p.append(
                f"data.crop_size must be a multiple of {stride} px (the stride of the "
                f"map after {m.frozen_blocks} frozen blocks) in (0, data.image_size={size}],"
                f" got {crop!r}"
            )
        elif crop // stride < m.grid:
            p.append(f"data.crop_size={crop} gives {crop // stride} cells < model.grid")
        if d.feature_cache and m.frozen_blocks == 0:
            p.append(
                "data.feature_cache=True needs model.frozen_blocks > 0 (only a frozen "
                "part's maps can be cached)"
            )
    if d.flip not in FLIP_MODES:
        p.append(f"data.flip must be one of {FLIP_MODES}, got {d.flip!r}")
    if not isinstance(m.grid, int) or m.grid < 1:
        p.append(f"model.grid must be an integer >= 1, got {m.grid!r}")
    if not isinstance(m.projection_dim, int) or m.projection_dim < 1:
        p.append(f"model.projection_dim must be an integer >= 1, got {m.projection_dim!r}")
    if not all(isinstance(w, int) and w > 0 for w in m.hidden):
        p.append(f"model.hidden must be positive integer widths, got {tuple(m.hidden)!r}")
    if not m.feature_scale > 0:
        p.append(f"model.feature_scale must be > 0, got {m.feature_scale!r}")
    p.extend(backbone_weights_problems(m.backbone, m.backbone_weights))
    if loss.mining not in MINING_MODES:
        p.append(f"loss.mining must be one of {MINING_MODES}, got {loss.mining!r}")
    if loss.margin < 0:
        p.append(f"loss.margin must be >= 0, got {loss.margin!r}")
    if loss.annotated_weight < 0:
        p.append(f"loss.annotated_weight must be >= 0, got {loss.annotated_weight!r}")
    if loss.mining == "none" and loss.annotated_weight == 0:
        p.append("loss.mining='none' and loss.annotated_weight=0: nothing to learn")
    if e.metric not in METRICS:
        p.append(f"eval.metric must be one of {METRICS}, got {e.metric!r}")
    if not isinstance(e.batch_size, int) or e.batch_size < 1:
        p.append(f"eval.batch_size must be a positive integer, got {e.batch_size!r}")
    if not e.ks or not all(isinstance(k, int) and k >= 1 for k in e.ks):
        p.append(f"eval.ks must be positive integers, got {tuple(e.ks)!r}")
    p.extend(bool_problems(e, "eval", ("multi_crop",)))
    p.extend(baseline_names_problems(e.baselines))
    return p
