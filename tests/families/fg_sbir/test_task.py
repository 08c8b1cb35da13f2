"""Fine-grained SBIR family: towers, pairing, batches, losses (cached = uncached), evaluation,
export, and the synthetic variant sharing the zero-shot family's records."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from sketch_tf import families
from sketch_tf.data import pipeline, schema, tfrecord
from sketch_tf.families.fg_sbir import evaluate as fg_evaluate
from sketch_tf.families.fg_sbir.task import FgSbirTask, read_pairs
from sketch_tf.models import fg_sbir as fg_models
from sketch_tf.train import loop
from sketch_tf.train.config import ConfigError, load_project_config, validate_config
from sketch_tf.train.tasks import LossContext
from tests.conftest import requires_hed
from tests.export_fixtures import exported_fixture

pytestmark = requires_hed

SIZE = 48  # 3 x 3 cells at the split point (stride 16); 32 px crops = 2 x 2 cells
N_TRAIN, N_TEST = 8, 4


def _png(draw_fn, size=SIZE) -> bytes:
    img = Image.new("L", (size, size), 255)
    draw_fn(ImageDraw.Draw(img))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _object_images(i: int, rng) -> tuple[bytes, bytes]:
    """A sketch and an edge map of object i: a box whose corners depend on i, the sketch
    wobbled."""
    x0, y0 = 4 + 3 * (i % 5), 6 + 4 * (i % 3)
    x1, y1 = SIZE - 6 - 2 * (i % 4), SIZE - 4 - 3 * (i % 2)
    edge = _png(lambda d: (d.rectangle([x0, y0, x1, y1], outline=0, width=2),
                           d.line([x0, y1, x1, y0], fill=0, width=1)))  # fmt: skip
    j = rng.integers(-1, 2, 4)
    sketch = _png(lambda d: (d.rectangle([x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3]],
                                         outline=0, width=3),
                             d.line([x0, y1, x1, y0], fill=0, width=2)))  # fmt: skip
    return sketch, edge


def _write_split(path, first: int, count: int, with_pairs: bool, classes=("shoes",)):
    """Objects first.. first + count - 1, object i of class i % len(classes)."""
    rng = np.random.default_rng(first)
    with tfrecord.ShardedWriter(path, schema.KIND_LABELLED_IMAGE, classes=list(classes)) as w:
        for i in range(first, first + count):
            sketch, edge = _object_images(i, rng)
            others = [j for j in range(first, first + count) if j != i]
            pairs = [[others[0], others[1]], [others[2], others[0]]] if with_pairs else []
            iid, c = f"{i:05d}", i % len(classes)
            for domain, image, p in (("sketch", sketch, pairs), ("edge", edge, [])):
                rec = schema.encode_labelled_image(
                    image, c, classes[c], domain, iid, f"{domain}[{i}]", preference_pairs=p
                )
                w.write(rec, class_id=c, class_name=classes[c], domain=domain)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """QMUL-like records: train/ (8 objects, with judgement pairs) and val/ (4 objects)."""
    root = tmp_path_factory.mktemp("fg_records")
    _write_split(root / "train", 0, N_TRAIN, with_pairs=True)
    _write_split(root / "val", 100, N_TEST, with_pairs=True)
    return str(root)


def _config(root, cache_dir="", **changes):
    config = load_project_config("fg_sbir", "shoes")
    config.data.root = root
    config.data.image_size = SIZE
    config.data.crop_size = 32
    config.data.cache_dir = str(cache_dir)
    config.model.grid = 2
    config.model.projection_dim = 8
    config.train.update(batch_size=4, num_steps=2, log_every=1, checkpoint_every=2)
    config.eval.update(batch_size=3, grid_queries=3, grid_top_k=2, ks=(1, 2))
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


# ---- towers ---------------------------------------------------------------------------------
def test_tower_parts_crops_and_shared_frozen_trunk():
    models = fg_models.build_fg_sbir_models(SIZE, projection_dim=8, grid=2)
    sketch, image = fg_models.sketch_tower(models), fg_models.image_tower(models)
    assert fg_models.trunk_of(sketch) is fg_models.trunk_of(image)  # one frozen HED part
    assert not fg_models.trunk_of(sketch).trainable_weights
    assert [w.path for w in sketch.trainable_weights] == ["projection/kernel", "projection/bias"]
    x = tf.random.uniform([2, SIZE, SIZE, 3], seed=1)
    maps = fg_models.trunk_of(sketch)(x)
    assert maps.shape == (2, 3, 3, 512)
    emb = sketch(x).numpy()
    assert emb.shape == (2, 2 * 2 * 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(fg_models.head_of(sketch)(maps).numpy(), emb, rtol=1e-5, atol=1e-6)
    # Crops at per-row offsets are windows of the map; the head takes any map size.
    crops = fg_models.crop_maps(maps, tf.constant([[0, 1], [1, 0]]), 2)
    np.testing.assert_array_equal(crops[0].numpy(), maps[0, 0:2, 1:3].numpy())
    np.testing.assert_array_equal(crops[1].numpy(), maps[1, 1:3, 0:2].numpy())
    assert fg_models.head_of(sketch)(crops).shape == emb.shape
    # Multi-crop: the mean of the 10 views' embeddings, renormalised.
    multi = fg_models.embed_images(sketch, x, multi_crop=True, crop_cells=2).numpy()
    flipped = fg_models.trunk_of(sketch)(tf.reverse(x, axis=[2]))
    views = []
    for m in (maps, flipped):
        for oy, ox in fg_models.view_offsets(3, 2):
            views.append(fg_models.head_of(sketch)(m[:, oy : oy + 2, ox : ox + 2]).numpy())
    mean = np.mean(views, axis=0)
    np.testing.assert_allclose(multi, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert fg_models.view_offsets(3, 2) == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0)]


def test_tuned_blocks_and_end_to_end_towers_train_the_trunk():
    tuned = fg_models.build_fg_tower(SIZE, trunk_blocks=5, frozen_blocks=4, grid=2)
    names = {w.path.split("/")[0] for w in tuned.trainable_weights}
    assert names == {"block5_conv1", "block5_conv2", "block5_conv3", "projection"}
    whole = fg_models.build_fg_tower(SIZE, trunk_blocks=4, frozen_blocks=0, grid=2)
    assert fg_models.trunk_of(whole)(tf.zeros([1, SIZE, SIZE, 3])).shape == (1, SIZE, SIZE, 3)
    assert len(whole.trainable_weights) == 2 * (2 + 2 + 3 + 3) + 2
    with pytest.raises(ValueError, match="frozen_blocks must be in 0..trunk_blocks=4"):
        fg_models.build_fg_tower(SIZE, frozen_blocks=5)


def test_registry_backbone_towers_train_whole_from_the_image(records, tmp_path):
    config = _config(records, tmp_path / "c", model__backbone="small_cnn",
                     model__frozen_blocks=0, data__feature_cache=False,
                     data__crop_size=SIZE)  # fmt: skip
    config.model.backbone_kwargs = {"widths": (8, 16)}
    assert FgSbirTask.validate_config(config) == []
    task = FgSbirTask(config)
    models = task.build_models()
    tower = fg_models.sketch_tower(models)
    assert fg_models.trunk_of(tower).count_params() == 0  # the split point is the image
    assert "projection/kernel" in [w.path for w in tower.trainable_weights]
    batch = next(iter(task.build_train_dataset(4, seed=0, models=models)))
    out = task.compute_losses(models, batch, LossContext(global_batch_size=4, num_replicas=1))
    assert np.isfinite(float(out["total"]))
    emb = tower(tf.zeros([2, SIZE, SIZE, 3])).numpy()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    bad = _config(records, model__backbone="small_cnn")  # frozen + cached + cropped
    assert "model.backbone='small_cnn' is trained whole from the image" in " ".join(
        FgSbirTask.validate_config(bad)
    )
    bad = _config(records, model__backbone="vgg17")
    assert "model.backbone must be one of" in " ".join(FgSbirTask.validate_config(bad))


# ---- data -----------------------------------------------------------------------------------
def test_pairs_and_judgement_negatives(records, tmp_path):
    split = read_pairs(os.path.join(records, "train"), "sketch", "edge")
    assert split.instance_ids.tolist() == [f"{i:05d}" for i in range(N_TRAIN)]
    assert split.sketch_objects.tolist() == list(range(N_TRAIN))
    # Object 0's sketch compared objects 1, 2 and 3: its negatives (never itself).
    assert sorted(split.negatives[0, : split.negative_counts[0]].tolist()) == [1, 2, 3]
    assert all(i not in split.negatives[i, : split.negative_counts[i]] for i in range(N_TRAIN))
    # A sketch without its image, and two images of one object, are errors naming the folder.
    bad = tmp_path / "bad"
    with tfrecord.ShardedWriter(bad, schema.KIND_LABELLED_IMAGE, classes=["shoes"]) as w:
        png = _png(lambda d: d.line([0, 0, 9, 9], fill=0))
        for domain, iid in (("sketch", "1"), ("edge", "2"), ("edge", "2")):
            rec = schema.encode_labelled_image(png, 0, "shoes", domain, iid)
            w.write(rec, class_id=0, class_name="shoes", domain=domain)
    with pytest.raises(ValueError, match=r"bad: two 'edge' records of instance '2'"):
        read_pairs(str(bad), "sketch", "edge")


@pytest.mark.parametrize("cached", [False, True])
def test_batches_hold_distinct_objects_paired_crops_and_flips(records, tmp_path, cached):
    config = _config(records, tmp_path / "cache", data__feature_cache=cached,
                     loss__annotated_weight=1.0)  # fmt: skip
    task = FgSbirTask(config)
    models = task.build_models()
    batches = list(task.build_train_dataset(4, seed=3, models=models).take(6))
    suffix = "_features" if cached else ""
    split = task.pairs("train")
    for b in batches:
        objects = b["object"].numpy()
        assert len(set(objects.tolist())) == 4  # distinct objects in a batch
        for o, n in zip(objects, b["negative_object"].numpy(), strict=True):
            assert n in split.negatives[o, : split.negative_counts[o]]
        for key in ("sketch_offset", "image_offset", "negative_offset"):
            assert b[key].numpy().min() >= 0 and b[key].numpy().max() <= 1  # 3 - 2 cells
        shape = (4, 3, 3, 512) if cached else (4, SIZE, SIZE, 3)
        assert b[f"sketch{suffix}"].shape == shape
    # Two epochs of two batches visit every object twice.
    seen = np.concatenate([b["object"].numpy() for b in batches[:4]])
    assert sorted(seen.tolist()) == sorted(list(range(N_TRAIN)) * 2)
    # The same seed gives the same batches.
    again = next(iter(task.build_train_dataset(4, seed=3, models=models)))
    np.testing.assert_array_equal(again["object"], batches[0]["object"])
    if not cached:
        # A flipped row mirrors the sketch and both images (the image itself vs its record).
        x = batches[0]["image"].numpy()
        for r, o in enumerate(batches[0]["object"].numpy()):
            plain = pipeline.preprocess(tf.constant(split.image_bytes[o]), True, SIZE, False)
            plain = plain.numpy()
            assert np.allclose(x[r], plain) or np.allclose(x[r], plain[:, ::-1])


def test_cached_and_uncached_losses_agree(records, tmp_path):
    ctx = LossContext(global_batch_size=4, num_replicas=1)
    out = {}
    for cached in (False, True):
        config = _config(records, tmp_path / "cache", data__feature_cache=cached,
                         loss__annotated_weight=0.5)  # fmt: skip
        task = FgSbirTask(config)
        tf.keras.utils.set_random_seed(0)
        models = task.build_models()
        batch = next(iter(task.build_train_dataset(4, seed=5, models=models)))
        out[cached] = {k: float(v) for k, v in task.compute_losses(models, batch, ctx).items()}
        out[cached]["objects"] = batch["object"].numpy().tolist()
    assert out[True]["objects"] == out[False]["objects"]
    assert set(out[True]) == {"in_batch", "annotated", "total", "objects"}
    # The cache stores float16 maps: the losses agree to its rounding.
    for key in ("in_batch", "annotated", "total"):
        assert out[True][key] == pytest.approx(out[False][key], rel=2e-3, abs=1e-4), key


def test_losses_match_hand_computation(records, tmp_path):
    config = _config(records, tmp_path / "cache", loss__annotated_weight=0.5,
                     loss__mining="hard")  # fmt: skip
    task = FgSbirTask(config)
    models = task.build_models()
    batch = next(iter(task.build_train_dataset(4, seed=0, models=models)))
    out = task.compute_losses(models, batch, LossContext(global_batch_size=4, num_replicas=1))
    s, p, n = (task.embed_batch(models, batch, r, True).numpy() for r in
               ("sketch", "image", "negative"))  # fmt: skip
    objects, neg_objects = batch["object"].numpy(), batch["negative_object"].numpy()
    keys = np.concatenate([p, n])
    labels = np.concatenate([objects, neg_objects])
    d = np.linalg.norm(s[:, None] - keys[None], axis=-1)
    same = labels[None] == objects[:, None]
    hardest_pos = np.where(same, d, -np.inf).max(1)
    hardest_neg = np.where(same, np.inf, d).min(1)
    in_batch = np.mean(np.maximum(hardest_pos - hardest_neg + 0.2, 0))
    annotated = np.mean(np.maximum(np.linalg.norm(s - p, axis=1) - np.linalg.norm(s - n, axis=1)
                                   + 0.2, 0))  # fmt: skip
    assert float(out["in_batch"]) == pytest.approx(in_batch, rel=1e-4)
    assert float(out["annotated"]) == pytest.approx(annotated, rel=1e-4, abs=1e-6)
    assert float(out["total"]) == pytest.approx(in_batch + 0.5 * annotated, rel=1e-4)


def test_validate_config_names_each_problem(records):
    assert FgSbirTask.validate_config(_config(records)) == []
    bad = _config(records, data__crop_size=40, loss__mining="hardest", data__flip="random")
    problems = " ".join(FgSbirTask.validate_config(bad))
    for text in ("data.crop_size must be a multiple of 16", "loss.mining must be one of",
                 "data.flip must be one of"):  # fmt: skip
        assert text in problems
    bad = _config(records, model__frozen_blocks=0)
    assert "data.feature_cache=True needs model.frozen_blocks > 0" in " ".join(
        FgSbirTask.validate_config(bad)
    )
    bad = _config(records, loss__mining="none")
    with pytest.raises(ConfigError, match="nothing to learn"):
        validate_config(bad)


def test_batch_larger_than_the_objects_and_missing_records(records, tmp_path):
    task = FgSbirTask(_config(records, tmp_path / "c", data__feature_cache=False))
    with pytest.raises(ValueError, match="train.batch_size=9 exceeds the 8 training objects"):
        task.build_train_dataset(9, 0)
    missing = FgSbirTask(_config(str(tmp_path / "nowhere")))
    with pytest.raises(Exception, match="prepare_data.py --source=qmul"):
        missing.records_dir("train")


# ---- train, evaluate, export ----------------------------------------------------------------
def test_gallery_through_the_cache_equals_the_towers(records, tmp_path):
    # The export / index gallery of a cached task: the image tower after the frozen part on
    # the cached float16 maps of the folder's images (any folder: `gallery_caches` reads the
    # folder's records, here the test split's); the towers on the images to float16 rounding.
    # (Multi-crop, with the mirrored maps: test_export_round_trip.)
    from sketch_tf.export import gallery as gallery_lib

    cached = FgSbirTask(_config(records, tmp_path / "cache"))
    plain = FgSbirTask(_config(records, tmp_path / "cache", data__feature_cache=False))
    models = cached.build_models()
    folder = cached.records_dir("test")
    got = gallery_lib.family_gallery(cached, models, folder)
    want = gallery_lib.family_gallery(plain, models, folder)
    for key in ("keys", "labels", "domains", "size", "metric"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_allclose(got["vectors"], want["vectors"], atol=2e-3)
    assert sorted(cached.gallery_caches(models, folder)) == ["image"]


def test_test_gallery_holds_the_classes_of_the_run(tmp_path):
    # A run restricted by data.classes is evaluated on those classes' test images: its
    # default ("test") gallery holds them only, and reuses the caches evaluation loaded; a
    # folder the user names keeps every class. Cached and uncached rows agree.
    from types import SimpleNamespace

    from sketch_tf.export import gallery as gallery_lib
    from sketch_tf.export import serving

    root = tmp_path / "records"
    _write_split(root / "train", 0, N_TRAIN, with_pairs=True, classes=("shoes", "chairs"))
    _write_split(root / "val", 100, 6, with_pairs=False, classes=("shoes", "chairs"))
    chairs = ("chairs",)
    task = FgSbirTask(_config(str(root), tmp_path / "cache", data__classes=chairs))
    plain = FgSbirTask(_config(str(root), "", data__feature_cache=False, data__classes=chairs))
    models = task.build_models()
    folder = task.records_dir("test")
    run = SimpleNamespace(task=task, models=models, manifest=lambda: {"task": "fg_sbir"})
    evaluated = task.feature_caches(models, "test")  # as evaluation loads them
    assert task.retrieval().gallery_classes() == chairs
    assert plain.retrieval().gallery_classes() == chairs
    assert FgSbirTask(_config(str(root))).retrieval().gallery_classes() is None
    test = serving.run_gallery(run, "test")
    assert test.manifest["classes"] == ["chairs"] and test.size == 3
    assert {x.decode() for x in test.labels.numpy()} == {"chairs"}
    assert [x.decode() for x in test.keys.numpy()] == ["edge[101]", "edge[103]", "edge[105]"]
    assert task.gallery_caches(models, folder, chairs)["image"] is evaluated["image"]
    # `retrieve.py --grid` reads a row of that gallery back among the records of its classes.
    from sketch_tf import search

    edges = {r["source"].numpy(): r["image"].numpy()
             for r in pipeline.labelled_records(folder, ["edge"])}  # fmt: skip
    assert search.gallery_images(folder, ["edge"], [2], ["chairs"]) == {2: edges[b"edge[105]"]}
    named = serving.run_gallery(run, folder)
    assert named.manifest["classes"] is None and named.size == 6
    assert {x.decode() for x in named.labels.numpy()} == {"shoes", "chairs"}
    for classes in (chairs, None):
        got = gallery_lib.family_gallery(task, models, folder, classes)
        want = gallery_lib.family_gallery(plain, models, folder, classes)
        for key in ("keys", "labels", "domains", "size", "classes"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_allclose(got["vectors"], want["vectors"], atol=2e-3)
    with pytest.raises(ValueError, match="cars"):
        gallery_lib.family_gallery(task, models, folder, ("cars",))


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("fg_run"))
    config = _config(records, os.path.join(workdir, "cache"), eval__multi_crop=True)
    result = loop.train(FgSbirTask(config), workdir, log=lambda s: None)
    return config, workdir, result


def test_train_and_evaluate_next_to_the_baselines(trained, monkeypatch):
    from sketch_tf.eval import retrieval

    config, workdir, result = trained
    assert result.status == "completed" and result.step == 2
    assert set(result.losses) == {"total", "in_batch"} and np.isfinite(result.losses["total"])
    task = FgSbirTask(config)
    state = loop.build_state(task)
    loop.restore_latest(state, os.path.join(workdir, "ckpt"), for_training=False)
    ranked = []
    real = retrieval.instance_retrieval_metrics

    def spy(q, g, match=None, **kwargs):
        ranked.append((np.shape(q)[0], np.shape(g)[0], list(match)))
        return real(q, g, match, **kwargs)

    monkeypatch.setattr(retrieval, "instance_retrieval_metrics", spy)
    res = task.evaluate(state.models, workdir)
    s = res["scalars"]
    # The baselines rank the model's 4 queries against its 4 images.
    assert len(ranked) == 3 and all(r == (4, 4, [0, 1, 2, 3]) for r in ranked)
    for prefix in ("", "hog/", "raw_pixels/", "random/"):
        assert 0.0 <= s[prefix + "acc_at_1"] <= s[prefix + "acc_at_2"] <= 1.0, prefix
        assert 1.0 <= s[prefix + "mean_rank"] <= 4.0, prefix
    assert s["random/acc_at_1"] == 0.25 and s["random/mean_rank"] == 2.5
    assert s["acc_at_1"] == np.mean(np.asarray(res["ranks"]) == 1)
    table = res["tables"]["held-out objects: model vs baselines"]
    assert [r[0] for r in table["rows"]] == ["model", "HOG (edge maps)", "raw pixels",
                                             "random (expected)"]  # fmt: skip
    assert os.path.isfile(os.path.join(workdir, "eval", "query_grid.png"))
    assert res["images"]["query_grid"].dtype == np.uint8
    # The main job's table: each headline next to HOG, raw pixels and random.
    for h in FgSbirTask.headlines:
        assert [k for _, k in h.baselines] == [f"{p}/{h.key}" for p in
                                               ("hog", "raw_pixels", "random")]  # fmt: skip
    # Evaluation on cached maps = the towers on the images (multi-crop included).
    split = task.pairs("test")
    cached = fg_evaluate.embed_role(task, state.models, split, "sketch")["embeddings"]
    images = tf.stack([pipeline.preprocess(tf.constant(b), True, SIZE, False)
                       for b in split.sketch_bytes])  # fmt: skip
    direct = fg_models.embed_images(
        fg_models.sketch_tower(state.models), images, multi_crop=True, crop_cells=2
    ).numpy()
    np.testing.assert_allclose(cached, direct, atol=2e-3)


# (run, export base, version folder): the trained run exported once with its test records as
# the gallery, shared by the tests below.
exported = exported_fixture("fg_sbir")


def test_export_round_trip(exported):
    from sketch_tf import index as index_lib

    run, _, path = exported
    loaded = tf.saved_model.load(path)
    names = {"embed_sketch", "embed_image", "retrieve"}
    assert names | {f"{n}_floats" for n in names} | {"search", "serving_default"} == set(
        loaded.signatures
    )
    split = run.task.pairs("test")
    sketch_png, image_png = split.sketch_bytes[1], split.image_bytes[1]
    models = run.models

    def want(png, role):
        x = pipeline.preprocess(tf.constant(png), True, SIZE, False)[None]
        tower = (fg_models.sketch_tower if role == "sketch" else fg_models.image_tower)(models)
        return fg_models.embed_images(tower, x, multi_crop=True, crop_cells=2).numpy(), x

    for role, png in (("sketch", sketch_png), ("image", image_png)):
        expected, x = want(png, role)
        got = loaded.signatures[f"embed_{role}"](images=tf.constant([png]))["embedding"]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
        floats = loaded.signatures[f"embed_{role}_floats"](images=x)["embedding"]
        np.testing.assert_allclose(floats.numpy(), expected, rtol=1e-4, atol=1e-5)
    # retrieve: the exact top-k of the test split's edge maps, keyed by their source.
    gallery = np.concatenate([want(b, "image")[0] for b in split.image_bytes])
    index = index_lib.GalleryIndex(gallery.shape[1], metric="euclidean")
    index.add(gallery)
    query = want(sketch_png, "sketch")[0]
    out = loaded.signatures["retrieve"](images=tf.constant([sketch_png]), k=tf.constant(3))
    scores, ids = index.search(query, 3)
    np.testing.assert_array_equal(out["ids"].numpy(), ids)
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-4)
    assert [k.decode() for k in out["keys"].numpy()[0]] == [f"edge[{100 + i}]" for i in ids[0]]
    many = loaded.signatures["search"](embedding=tf.constant(query), k=tf.constant(50))
    assert int(many["k"]) == N_TEST and bool(many["clipped"])


def test_family_registers_through_the_contract_only():
    assert "fg_sbir" in families.family_names()
    assert families.get_task_class("fg_sbir") is FgSbirTask


def test_synthetic_variants_share_the_zero_shot_records():
    fg = load_project_config("fg_sbir", "synthetic")
    zs = load_project_config("zs_sbir", "synthetic")
    assert fg.data.root == zs.data.root
    options = dict(fg.data.synthetic)
    assert options.pop("task") == "zs_sbir" and options == dict(zs.data.synthetic)
    for variant in ("synthetic", "synthetic_smoke", "shoes", "chairs", "shoes_gpu", "chairs_gpu"):
        validate_config(load_project_config("fg_sbir", variant))


def test_two_logical_cpus_give_the_losses_of_one_replica(records, tmp_path, two_cpu_strategy):
    # In-batch mining over the gathered global batch; the cache's lookups live in the input
    # pipeline that MirroredStrategy splits.
    from tests.distributed import assert_same_losses_as_one_replica

    config = _config(records, tmp_path / "cache", loss__annotated_weight=0.5)
    figures = assert_same_losses_as_one_replica(config, tmp_path, two_cpu_strategy)
    assert figures["losses"] >= 6  # total, in_batch, annotated at 2 steps
