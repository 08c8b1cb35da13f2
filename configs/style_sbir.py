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
- `bam` (GPU): BAM! images with one media and one content label (the original's 5
  contents bicycle, bird, cars, cat, dog and 7 media), `prepare_data.py --source=style
  --sqlite_path=... --test_fraction=0.2`, with Quick, Draw! drawings as the sketches; both
  towers start from ImageNet VGG16 and are fine-tuned end to end (see `bam`).

The recipe is the original's two stages, one config (`stage_order`): `classify` trains the
style tower on content x style classes (and the structure branch), `triplet` then trains the
style tower with same-style / other-content positives, initialised from `classify`. Both
towers sit on the frozen pretrained `vgg16_hed` trunk with cached features (the CPU recipe
of DESIGN.md); `--config.model.structure.freeze_trunk=False
--config.model.style.freeze_trunk=False --config.data.feature_cache=False` fine-tunes them.
"""

import ml_collections

from sketch_tf.families.style_sbir.config import defaults, two_stages
from sketch_tf.train.config_sections import config_getter, variants_by_name

#: Gallery media of the PACS variant.
PACS_STYLES = ("art_painting", "cartoon", "photo")
PACS_CONTENTS = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
#: The original's BAM! content classes and media.
BAM_CONTENTS = ("bicycle", "bird", "cars", "cat", "dog")
BAM_STYLES = ("3d_graphics", "comic", "graphite", "oilpaint", "pen_ink", "vectorart", "watercolor")


def synthetic(config: ml_collections.ConfigDict) -> None:
    """The synthetic world: 12 categories x 7 styles, 24 instances per category (16 train, 8
    test), 96 px records used at 64 px; 300 + 300 steps of batch 64.

    Issue 26 (the main job in 15 minutes on a 60 GFLOP/s CPU): 16 training instances instead
    of 24 cut a third of the cached trunk passes; seed 0 gave mAP 0.668 / sketch-only 0.702
    (non-learned 0.229 / HOG 0.586) against 0.732 / 0.751 (0.224 / 0.586) before
    (docs/style_sbir.md)."""
    config.data.root = "data/records/synthetic_style"
    config.data.image_size = 64
    config.data.synthetic = ml_collections.ConfigDict(
        {"task": "style", "seed": 0, "image_size": 96, "n_per_category": 24,
         "test_fraction": 1 / 3}
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
    two_stages(config, 2, 2)


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
    sketches (as the original), longer training; a GPU job:
      python prepare_data.py --source=style --root=<BAM images> --sqlite_path=<bam.sqlite> \
          --test_fraction=0.2 --out=data/records/bam
      python prepare_data.py --source=quickdraw --root=<ndjson folder> \
          --categories=bicycle,bird,car,cat,dog --out=data/records/quickdraw_bam/train
      (and the same from held-out drawings into data/records/quickdraw_bam/test)
      python train.py --config=configs/style_sbir.py:bam --workdir=runs/style_bam
      python evaluate.py --workdir=runs/style_bam

    Both towers start from ImageNet, as the original's networks did (Collomosse et al., ICCV
    2017: ImageNet-trained GoogLeNet-style towers; there is no GoogLeNet here): the `vgg16`
    trunk with `backbone_weights="imagenet"` (Keras' VGG16, 58.9 MB, fetched once into the
    Keras cache; docs/weights.md), the same cuts and poolings as the CPU recipe, and every
    layer fine-tuned (no frozen trunk, no feature cache). The original reports sketch-only
    mAP 0.915 over the styles (relevant = same content) and about 0.6 for sketch + style
    (relevant = same content and style); our `sketch_map` / `sketch_style_map`. Offline,
    `--config.model.structure.backbone=vgg16_hed --config.model.style.backbone=vgg16_hed
    --config.model.structure.backbone_weights= --config.model.style.backbone_weights=` keeps
    the same towers on HED's bundled weights.
    """
    config.data.root = "data/records/bam"
    config.data.classes = BAM_CONTENTS
    config.data.styles = BAM_STYLES
    config.data.train_sketches = "data/records/quickdraw_bam/train"
    config.data.query_sketches = "data/records/quickdraw_bam/test"
    config.data.sketch_class_names = ml_collections.ConfigDict({"car": "cars"})
    config.data.image_size = 224
    for tower in (config.model.structure, config.model.style):
        tower.update(backbone="vgg16", backbone_weights="imagenet", freeze_trunk=False)
    config.data.feature_cache = False  # only a frozen trunk's features can be cached
    two_stages(config, 5000, 5000)


#: Variant name -> function that edits `defaults()` in place.
VARIANTS = variants_by_name(synthetic, synthetic_smoke, pacs, pacs_quickdraw, bam)
get_config = config_getter("style_sbir", defaults, VARIANTS)
