"""Zero-shot SBIR family: models, losses, GRL schedule, training steps, evaluate, export."""

import os

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.data import pipeline
from sketch_tf.families.zs_sbir.task import ZsSbirTask
from sketch_tf.models import zs_sbir as zs_models
from sketch_tf.train import loop
from sketch_tf.train.config import apply_overrides, load_project_config
from sketch_tf.train.tasks import LossContext

CATS = ["airplane", "bed", "bottle", "mug"]
SIZE = 32


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from sketch_tf.data.synthetic.prepare import prepare_synthetic

    root = tmp_path_factory.mktemp("zs_records")
    prepare_synthetic("zs_sbir", root, image_size=48, n_per_category=4, test_fraction=0.5,
                      categories=CATS)  # fmt: skip
    return str(root)


def _config(root, **loss):
    config = load_project_config("zs_sbir", "synthetic")
    config.data.root = root
    config.data.image_size = SIZE
    config.data.unseen_classes = ("bottle", "mug")
    config.data.shuffle_buffer = 4
    config.model.backbone_kwargs.widths = (8, 16)
    config.model.projection_dim = 16
    config.model.domain_hidden = 16
    config.train.update(batch_size=4, num_steps=2, log_every=1, steps_per_epoch=2)
    config.grl.update(start_epoch=1, threshold_epoch=3)
    config.eval.update(batch_size=8, grid_queries=3, grid_top_k=2, projector_max=6)
    config.loss.update(loss)
    return config


def test_models_shapes_shared_and_classifier():
    models = zs_models.build_zs_sbir_models(
        "small_cnn", SIZE, projection_dim=16, backbone_kwargs={"widths": (8, 16)},
        domain_hidden=16,
    )  # fmt: skip
    assert set(models) == {"sketch_tower", "photo_tower", "domain_classifier"}
    x = tf.random.uniform([3, SIZE, SIZE, 3], seed=1)
    assert zs_models.sketch_tower(models)(x).shape == (3, 16)
    assert zs_models.sketch_tower(models) is not zs_models.photo_tower(models)
    clf = models["domain_classifier"]
    dense = [layer for layer in clf.layers if layer.name.startswith("dense")]
    bns = [layer for layer in clf.layers if layer.name.startswith("bn")]
    assert len(dense) == 4 and len(bns) == 4 and all(d.units == 16 for d in dense)
    assert clf(tf.zeros([5, 16])).shape == (5, 1)

    shared = zs_models.build_zs_sbir_models(
        "small_cnn", SIZE, shared=True, backbone_kwargs={"widths": (8, 16)}, domain_hidden=16
    )
    assert set(shared) == {"tower", "domain_classifier"}
    assert zs_models.sketch_tower(shared) is zs_models.photo_tower(shared)
    # Global max pooling of the last width without a projection head.
    assert zs_models.photo_tower(shared)(x).shape == (3, 16)


def test_domain_classifier_gradient_is_reversed_and_scaled():
    clf = zs_models.build_domain_classifier(6, hidden=8, num_layers=2)
    x = tf.random.normal([4, 6], seed=3)
    after_grl = clf.layers[2:]  # [Input, GRL, dense0, ...]

    def plain(v):
        for layer in after_grl:
            v = layer(v, training=False)
        return v

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(plain(x) ** 2)
    g_plain = tape.gradient(y, x)
    for lam in (1.0, 0.25):
        zs_models.set_grl_lambda({"domain_classifier": clf}, lam)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(clf(x, training=False) ** 2)
        np.testing.assert_allclose(tape.gradient(y, x), -lam * g_plain, rtol=1e-5, atol=1e-7)


def test_losses_match_hand_computation(records):
    task = ZsSbirTask(_config(records))
    models = task.build_models()
    batch = next(iter(task.build_train_dataset(4, seed=0)))
    out = task.compute_losses(models, batch, LossContext(global_batch_size=4, num_replicas=1))
    s = zs_models.sketch_tower(models)(batch["sketch"], training=True).numpy()
    p = zs_models.photo_tower(models)(batch["photo_pos"], training=True).numpy()
    n = zs_models.photo_tower(models)(batch["photo_neg"], training=True).numpy()
    dp, dn = np.linalg.norm(s - p, axis=1), np.linalg.norm(s - n, axis=1)
    expected = np.mean(np.maximum(dp - dn + 1.0, 0.0))
    np.testing.assert_allclose(out["triplet"], expected, rtol=1e-4)
    z = models["domain_classifier"](np.concatenate([s, p, n]), training=True).numpy()[:, 0]
    y = np.array([0] * 4 + [1] * 8, np.float64)
    bce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    np.testing.assert_allclose(out["domain"], bce.mean(), rtol=1e-4)
    np.testing.assert_allclose(out["total"], expected + 0.5 * bce.mean(), rtol=1e-4)
    # Seen classes only in training.
    unseen_ids = {CATS.index("bottle"), CATS.index("mug")}
    assert not set(batch["class_id"].numpy()) & unseen_ids
    assert not set(batch["neg_class_id"].numpy()) & unseen_ids


def test_mined_negatives_and_ablation_terms(records):
    task = ZsSbirTask(_config(records, negatives="mined", mining="hard", domain_weight=0.0))
    models = task.build_models()
    batch = next(iter(task.build_train_dataset(4, seed=0)))
    out = task.compute_losses(models, batch, LossContext(global_batch_size=4, num_replicas=1))
    assert set(out) == {"triplet", "total"} and np.isfinite(out["total"].numpy())
    ids = {id(v) for v in task.trainable_variables(models)}
    assert not ids & {id(v) for v in models["domain_classifier"].trainable_variables}
    config = _config(records)
    ablation = apply_overrides(config, config.ablations.no_domain, "ablations.no_domain")
    assert ablation.loss.domain_weight == 0.0 and config.loss.domain_weight > 0


def test_grl_schedule_values_set_the_layer(records):
    task = ZsSbirTask(_config(records))  # 2 steps per epoch, ramp from epoch 1 to 3
    models = task.build_models()
    for step, lam in ((0, 0.0), (1, 0.0), (2, 0.0), (4, 0.5), (6, 1.0), (40, 1.0)):
        values = task.schedule_values(models, step)
        assert values["grl_lambda"] == pytest.approx(lam)
        assert float(zs_models.grl_layer(models).lambda_) == pytest.approx(lam)


def test_validate_config_and_missing_records(tmp_path):
    config = _config(str(tmp_path / "nowhere"))
    assert ZsSbirTask.validate_config(config) == []
    config.loss.negatives = "nearest"
    config.model.backbone = "vgg99"
    config.data.seen_classes = ("mug",)
    problems = " ".join(ZsSbirTask.validate_config(config))
    assert "loss.negatives" in problems and "model.backbone" in problems and "overlap" in problems
    task = ZsSbirTask(_config(str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="nowhere.*prepare_data.py --source=synthetic"):
        task.build_train_dataset(4, 0)


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    config = _config(records)
    workdir = str(tmp_path_factory.mktemp("zs_run"))
    result = loop.train(ZsSbirTask(config), workdir, log=lambda s: None)
    return config, workdir, result


def test_train_default_strategy(trained):
    _, workdir, result = trained
    assert result.status == "completed" and result.step == 2
    assert set(result.losses) == {"total", "triplet", "domain"}
    assert all(np.isfinite(v) for v in result.losses.values())


def test_train_two_logical_cpus(records, tmp_path, two_cpu_strategy):
    config = _config(records, negatives="mined")
    strategy = two_cpu_strategy
    result = loop.train(ZsSbirTask(config), str(tmp_path), strategy, log=lambda s: None)
    assert result.status == "completed" and result.step == 2
    assert all(np.isfinite(v) for v in result.losses.values())


def test_evaluate_outputs(trained):
    config, workdir, _ = trained
    task = ZsSbirTask(config)
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    result = task.evaluate(state.models, workdir)
    scalars = result["scalars"]
    for key in ("map_all", "map_200", "p_100", "p_200"):
        assert 0.0 <= scalars[key] <= 1.0 and 0.0 <= scalars[f"random_{key}"] <= 1.0
    # 2 unseen classes x 2 test instances: 4 sketch queries against 4 photos.
    assert scalars["num_queries"] == 4 and scalars["num_gallery"] == 4
    # A random ranking over 4 items, 2 relevant: P@100 = relevant / gallery = 0.5 exactly.
    assert scalars["random_p_100"] == pytest.approx(0.5)
    per_class = result["tables"]["per unseen class"]
    assert [row[0] for row in per_class["rows"]] == ["bottle", "mug"]
    grid = result["images"]["retrieval_grid"]
    assert grid.dtype == np.uint8 and grid.ndim == 4 and grid.shape[-1] == 3
    eval_dir = os.path.join(workdir, "eval")
    for name in ("retrieval_grid.png", "projector/sprite.png", "projector/tensors.tsv"):
        assert os.path.isfile(os.path.join(eval_dir, name)), name
    with open(os.path.join(eval_dir, "projector", "metadata.tsv")) as f:
        assert set(f.read().split()) == {"bottle", "mug"}


def test_export_round_trip(trained, tmp_path):
    from sketch_tf.export.serving import export_saved_model

    config, workdir, _ = trained
    task = ZsSbirTask(config)
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    path = export_saved_model(task, state.models, str(tmp_path / "export"), 1)
    loaded = tf.saved_model.load(path)
    assert {"serving_default", "embed_photo", "embed_sketch"} <= set(loaded.signatures)
    png = task.warmup_inputs()["serving_default"]["images"][:1]
    got = loaded.signatures["serving_default"](images=tf.constant(png))["embedding"].numpy()
    image = pipeline.preprocess(tf.constant(png[0]), True, SIZE, False)
    want = zs_models.sketch_tower(state.models)(image[None], training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    via_float = loaded.signatures["embed_sketch"](images=image[None])["embedding"].numpy()
    np.testing.assert_allclose(via_float, want, rtol=1e-4, atol=1e-5)
    assert os.path.isfile(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
    # Float tensors of any size are resized as evaluation does; bad bytes name the input.
    big = tf.image.resize(image[None], [2 * SIZE, 2 * SIZE])
    assert loaded.signatures["embed_sketch"](images=big)["embedding"].shape == want.shape
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `images`"):
        loaded.signatures["embed_photo"](images=tf.constant([b"not an image"]))
