"""The style_sbir config: its defaults, their checks, and what older run folders keep.

`defaults()` is the complete config (every key the task reads, with a comment saying what it
means); configs/style_sbir.py edits it into variants. `validate(config)` lists the problems of
a config (`StyleSbirTask.validate_config`). `OLD_RUN_VALUES` is what
`sketch_tf.train.config.migrate` fills into a stored config.json that lacks a key, where that
differs from the default.
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

MINING_MODES = ("semi_hard", "hard", "all", "random")

#: Sub-trees whose keys are the user's: `migrate` fills them only when absent as a whole.
FREE_FORM = (
    "model.structure.backbone_kwargs",
    "model.style.backbone_kwargs",
    "data.sketch_class_names",  # {sketch class: content class}
)
#: Keys renamed in this family (old -> new); the generic ones are in `train.config`.
RENAMED_KEYS: dict[str, str] = {}
#: Keys whose value is now computed from others (none in this family).
DERIVED_KEYS: dict = {}
#: The value a run folder whose config.json lacks the key keeps, where the code read the
#: absent key with a fallback that differs from `defaults()`: what that run trained with.
#: The other keys added since the first version (data.train_sketches, query_sketches,
#: sketch_class_names) were read with a fallback equal to their default.
OLD_RUN_VALUES = {
    # Added (default "semi_hard") in e668058; the code read a config without it
    # as "" (the explicit (A, P, N) triplets of the batch, the original's), what those runs
    # trained with.
    "loss.style_mining": "",
}


def _tower(backbone, cut, pooling, projection_dim, head_hidden=()):
    """A `model.structure` / `model.style` section (a frozen trunk and a trained head)."""
    return ml_collections.ConfigDict(
        {
            "backbone": backbone,
            "backbone_kwargs": {"cut": cut, "pooling": pooling},
            "backbone_weights": "",
            "projection_dim": projection_dim,
            "head_hidden": tuple(head_hidden),
            "freeze_trunk": True,
        }
    )


def defaults() -> ml_collections.ConfigDict:
    """The complete style_sbir config: the two-stage recipe on frozen, cached `vgg16_hed`
    trunks that every variant of configs/style_sbir.py edits (data and sizes)."""
    config = retrieval_config("style_sbir", root="")
    config.data.styles = ()  # gallery media (domains); () = every domain but the sketches'
    config.data.classes = ()  # content classes; () = all
    # Sketches from other record folders (matched to the contents by class name, or by
    # sketch_class_names {sketch class: content}): for training ("" = the training records'
    # own sketch domain) and as evaluation queries ("" = the test records' own).
    config.data.train_sketches = ""
    config.data.query_sketches = ""
    config.data.sketch_class_names = ml_collections.ConfigDict()
    config.data.image_size = 224
    # The style negative: another style and the anchor's content ("same_content", the
    # decorrelating rule of the original's stage 2) or another style of any content ("any").
    config.data.negative_rule = "same_content"
    config.data.train_augment = False
    config.data.feature_cache = True  # cached features of the frozen trunks
    config.data.cache_dir = ""  # "" = <records folder>/cache
    config.data.shuffle_buffer = 256

    config.model = ml_collections.ConfigDict()
    # Structure: HED's VGG16 to block5, max-pooled on a 2x2 grid, 128-d head.
    config.model.structure = _tower("vgg16_hed", "block5", "max_grid2", 128)
    config.model.structure.shared = False
    # Style: the feature statistics (mean, std per channel) of HED's blocks 1-4, MLP head
    # (on PACS: style_map 0.82 vs 0.79 for block3 alone, sketch + style mAP 0.312 vs 0.292).
    config.model.style = _tower("vgg16_hed", "block4", "mean_std_blocks", 64, (256,))

    config.loss = ml_collections.ConfigDict()
    config.loss.structure_weight = 1.0
    config.loss.structure_margin = 0.2  # on L2-normalised embeddings
    config.loss.structure_mining = "semi_hard"
    config.loss.style_class_weight = 1.0
    config.loss.style_triplet_weight = 0.0
    config.loss.style_margin = 0.2
    # "" = the explicit (A, P, N) triplets of the batch (the original); semi_hard / hard /
    # all / random = mined over every A, P, N of the global batch (positives: same style,
    # other content; negatives: data.negative_rule).
    config.loss.style_mining = "semi_hard"  # PACS: 0.321 vs 0.312 explicit, 0.178 "hard"

    config.eval = ml_collections.ConfigDict()
    config.eval.alpha = 0.5  # structure weight of the combined score (query-time)
    config.eval.alpha_sweep = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.eval.batch_size = 64
    config.eval.baselines = True  # HOG, colour + texture, random
    config.eval.baseline_repeats = 5
    config.eval.exemplar_seed = 0
    config.eval.grid_queries = 8
    config.eval.grid_top_k = 8

    config.train = base_train_config()
    config.train.update(batch_size=64, num_steps=400, learning_rate=1e-3, log_every=50,
                        checkpoint_every=400)  # fmt: skip
    add_run_sections(config)
    two_stages(config, 300, 300)
    # evaluate.py --ablations=any_negative: stage 2 with negatives of any content.
    config.ablations.any_negative = ml_collections.ConfigDict({"data": {"negative_rule": "any"}})
    return config


def two_stages(config, classify_steps: int, triplet_steps: int) -> None:
    """The original's recipe: stage `classify` (content x style classification of the style
    tower, and the structure triplet), then `triplet` (style triplet only), initialised from
    `classify`."""
    config.stage_order = ("classify", "triplet")
    config.stages = ml_collections.ConfigDict(
        {
            "classify": {
                "loss": {"style_class_weight": 1.0, "style_triplet_weight": 0.0},
                "train": {"num_steps": classify_steps, "checkpoint_every": classify_steps},
            },
            "triplet": {
                "loss": {
                    "structure_weight": 0.0,
                    "style_class_weight": 0.0,
                    "style_triplet_weight": 1.0,
                },
                "train": {"num_steps": triplet_steps, "checkpoint_every": triplet_steps},
            },
        }
    )


def validate(config: ml_collections.ConfigDict) -> list[str]:
    """Problems in the style_sbir sections of `config` (empty when valid); every key present
    (`sketch_tf.train.config.validate_config` checks that first)."""
    # Imported here: configs/style_sbir.py imports this module for `defaults`, which must
    # stay cheap (no TensorFlow) for the absl config flags.
    from sketch_tf.families.cached_towers import cache_problems
    from sketch_tf.families.style_sbir import data as style_data
    from sketch_tf.models import style as style_models
    from sketch_tf.models.backbones import (
        BACKBONES,
        HED_POOLINGS,
        VGG16_TRUNKS,
        backbone_weights_problems,
    )

    d, m, loss, e = config.data, config.model, config.loss, config.eval
    p = root_problems(d)
    if not isinstance(d.image_size, int) or d.image_size < 32:
        p.append(f"data.image_size must be an integer >= 32, got {d.image_size!r}")
    rules = style_data.STYLE_NEGATIVE_RULES
    if d.negative_rule not in rules:
        p.append(f"data.negative_rule must be one of {rules}, got {d.negative_rule!r}")
    if d.sketch_domain in tuple(d.styles):
        p.append(f"data.styles must not hold the sketch domain {d.sketch_domain!r}")
    if len(set(d.styles)) != len(tuple(d.styles)):
        p.append(f"data.styles lists a style twice: {tuple(d.styles)!r}")
    for key in ("train_sketches", "query_sketches"):
        folder = d[key]
        if folder and not os.path.isfile(os.path.join(folder, "manifest.json")):
            p.append(f"data.{key}={folder} holds no records (no manifest.json)")
    p.extend(bool_problems(d, "data", ("feature_cache", "train_augment")))
    for name in ("structure", "style"):
        s = m[name]
        if s.backbone not in BACKBONES:
            p.append(
                f"model.{name}.backbone must be one of {sorted(BACKBONES)}, got {s.backbone!r}"
            )
        # The backbone's own pooling when backbone_kwargs does not name one.
        pooling = (s.backbone_kwargs or {}).get("pooling")
        if s.backbone in VGG16_TRUNKS and pooling is not None and pooling not in HED_POOLINGS:
            p.append(f"model.{name}.backbone_kwargs.pooling must be one of {HED_POOLINGS}")
        key = f"model.{name}.backbone_weights"
        p.extend(backbone_weights_problems(s.backbone, s.backbone_weights, key))
        if not isinstance(s.projection_dim, int) or s.projection_dim < 0:
            p.append(f"model.{name}.projection_dim must be an integer >= 0")
        if any(int(w) <= 0 for w in s.head_hidden):
            p.append(f"model.{name}.head_hidden widths must be > 0, got {tuple(s.head_hidden)}")
        if not isinstance(s.freeze_trunk, bool):
            p.append(f"model.{name}.freeze_trunk must be True or False")
    frozen = {f"model.{n}.freeze_trunk": m[n].freeze_trunk for n in ("structure", "style")}
    p.extend(cache_problems(config, frozen))
    weights = ("structure_weight", "style_class_weight", "style_triplet_weight")
    if any(float(loss[k]) < 0 for k in weights):
        p.append(f"loss.{'/'.join(weights)} must be >= 0")
    elif not config.stage_order and all(float(loss[k]) == 0 for k in weights):
        p.append(f"loss: {', '.join(weights)} are all 0: nothing to learn")
    for k in ("structure_margin", "style_margin"):
        if float(loss[k]) < 0:
            p.append(f"loss.{k} must be >= 0, got {loss[k]}")
    if loss.style_mining not in ("",) + MINING_MODES:
        p.append(f"loss.style_mining must be '' or one of {MINING_MODES}")
    if loss.structure_mining not in MINING_MODES:
        mining = loss.structure_mining
        p.append(f"loss.structure_mining must be one of {MINING_MODES}, got {mining!r}")
    try:
        style_models.check_alpha(e.alpha, "eval.alpha")
        for a in e.alpha_sweep:
            style_models.check_alpha(a, "eval.alpha_sweep values")
    except ValueError as err:
        p.append(str(err))
    if e.batch_size <= 0:
        p.append(f"eval.batch_size must be > 0, got {e.batch_size}")
    return p
