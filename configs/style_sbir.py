"""Style-aware sketch-based image retrieval: a sketch gives the content, an exemplar the style.

Variants (`--config=configs/style_sbir.py:<variant>`):

- `synthetic` (default, CPU, minutes): the embedded synthetic world, 12 categories x 7 styles
  (3d_graphics, comic, graphite, oilpaint, pen_ink, vectorart, watercolor), held-out shape
  instances for evaluation. Records are generated when missing:
    python prepare_data.py --source=synthetic --task=style --image_size=96 \\
        --n_per_category=32 --test_fraction=0.25 --out=data/records/synthetic_style
    python train.py --config=configs/style_sbir.py:synthetic --workdir=runs/style_synthetic
    python evaluate.py --workdir=runs/style_synthetic
  Figures: docs/style_sbir.md (and the README table).
- `pacs` (CPU): PACS; gallery media photo, art_painting, cartoon (the 3 styles) of the 7
  classes, queries from the PACS sketch domain; 30% of the instances held out:
    python prepare_data.py --source=folders --root=../shared/data/pacs \\
        --style_domains=art_painting,cartoon,photo --test_fraction=0.3 \\
        --out=data/records/pacs_style
    python train.py --config=configs/style_sbir.py:pacs --workdir=runs/style_pacs
- `pacs_quickdraw`: `pacs` queried with Quick, Draw! drawings of its classes (no "person").
- `bam` (GPU-sized): BAM! images with one media and one content label (the original's 5
  contents bicycle, bird, cars, cat, dog and 7 media), `prepare_data.py --source=style
  --sqlite_path=... --test_fraction=0.2`, with Quick, Draw! drawings as the sketches.

The recipe is the original's two stages, one config (`stage_order`): `classify` trains the
style tower on content x style classes (and the structure branch), `triplet` then trains the
style tower with same-style / other-content positives, initialised from `classify`. Both
towers sit on the frozen pretrained `vgg16_hed` trunk with cached features (the CPU recipe
of DESIGN.md); `--config.model.structure.freeze_trunk=False
--config.model.style.freeze_trunk=False --config.data.feature_cache=False` fine-tunes them.
"""

import ml_collections

from sketch_tf.train.config import add_run_sections, base_train_config

#: Gallery media of the PACS variant.
PACS_STYLES = ("art_painting", "cartoon", "photo")
PACS_CONTENTS = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
#: The original's BAM! content classes and media.
BAM_CONTENTS = ("bicycle", "bird", "cars", "cat", "dog")
BAM_STYLES = ("3d_graphics", "comic", "graphite", "oilpaint", "pen_ink", "vectorart", "watercolor")


def _tower(backbone, cut, pooling, projection_dim, head_hidden=()):
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


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "style_sbir"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.root = ""
    config.data.train_split = "train"
    config.data.test_split = "test"
    config.data.sketch_domain = "sketch"
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
    _two_stages(config, 300, 300)
    # evaluate.py --ablations=any_negative: stage 2 with negatives of any content.
    config.ablations.any_negative = ml_collections.ConfigDict({"data": {"negative_rule": "any"}})
    return config


def _two_stages(config, classify_steps: int, triplet_steps: int) -> None:
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


def synthetic(config: ml_collections.ConfigDict) -> None:
    """The synthetic world: 12 categories x 7 styles, 32 instances per category (24 train, 8
    test), 96 px records used at 64 px; 300 + 300 steps of batch 64."""
    config.data.root = "data/records/synthetic_style"
    config.data.image_size = 64
    config.data.synthetic = ml_collections.ConfigDict(
        {"task": "style", "seed": 0, "image_size": 96, "n_per_category": 32,
         "test_fraction": 0.25}
    )  # fmt: skip


def synthetic_smoke(config: ml_collections.ConfigDict) -> None:
    """main_job.py --smoke: the whole flow on a tiny world in seconds (numbers mean nothing)."""
    synthetic(config)
    config.data.root = "data/records/synthetic_style_smoke"
    config.data.image_size = 32
    config.data.synthetic = ml_collections.ConfigDict(
        {"task": "style", "seed": 0, "image_size": 48, "n_per_category": 4,
         "test_fraction": 0.5, "categories": ("airplane", "bed", "bottle")}
    )  # fmt: skip
    config.train.update(batch_size=8, log_every=1)
    config.eval.baseline_repeats = 2
    _two_stages(config, 2, 2)


def pacs(config: ml_collections.ConfigDict) -> None:
    """PACS: 7 contents x 3 gallery styles (art_painting, cartoon, photo), PACS sketches as
    queries, 30% of the instances held out (`prepare_data.py --test_fraction=0.3`); 128 px."""
    config.data.root = "data/records/pacs_style"
    config.data.styles = PACS_STYLES
    config.data.image_size = 128
    config.eval.batch_size = 32


def pacs_quickdraw(config: ml_collections.ConfigDict) -> None:
    """`pacs` evaluated with Quick, Draw! drawings of the same classes as the sketch queries
    (trained on the PACS sketches as `pacs`); Quick, Draw! has no "person", so the 6 other
    classes:
      python prepare_data.py --source=quickdraw --root=../shared/data/quickdraw \
          --categories=dog,elephant,giraffe,guitar,horse,house --out=data/records/quickdraw_pacs
    """
    pacs(config)
    config.data.classes = tuple(c for c in PACS_CONTENTS if c != "person")
    config.data.query_sketches = "data/records/quickdraw_pacs"


def bam(config: ml_collections.ConfigDict) -> None:
    """BAM!: the original's 5 contents x 7 media at 224 px, Quick, Draw! drawings as the
    sketches (as the original), longer training (a GPU job with unfrozen trunks:
    `--config.model.*.freeze_trunk=False --config.data.feature_cache=False`):
      python prepare_data.py --source=style --root=<BAM images> --sqlite_path=<bam.sqlite> \
          --test_fraction=0.2 --out=data/records/bam
      python prepare_data.py --source=quickdraw --root=<ndjson folder> \
          --categories=bicycle,bird,car,cat,dog --out=data/records/quickdraw_bam/train
      (and the same from held-out drawings into data/records/quickdraw_bam/test)
    """
    config.data.root = "data/records/bam"
    config.data.classes = BAM_CONTENTS
    config.data.styles = BAM_STYLES
    config.data.train_sketches = "data/records/quickdraw_bam/train"
    config.data.query_sketches = "data/records/quickdraw_bam/test"
    config.data.sketch_class_names = ml_collections.ConfigDict({"car": "cars"})
    config.data.image_size = 224
    _two_stages(config, 5000, 5000)


#: Variant name -> function that edits the `_base` config in place.
VARIANTS = {
    "synthetic": synthetic,
    "synthetic_smoke": synthetic_smoke,
    "pacs": pacs,
    "pacs_quickdraw": pacs_quickdraw,
    "bam": bam,
}


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
    variant = arg or "synthetic"
    if variant not in VARIANTS:
        raise ValueError(f"unknown style_sbir variant {variant!r}; known: {', '.join(VARIANTS)}")
    config = _base()
    VARIANTS[variant](config)
    return config
