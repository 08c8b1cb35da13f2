"""Style-aware SBIR family: sampler, stages, losses, metric tables, evaluation, export."""

import copy
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.core.png import encode_png
from sketch_tf.data import pipeline, schema
from sketch_tf.data.tfrecord import ShardedWriter
from sketch_tf.export import gallery as gallery_lib
from sketch_tf.families.style_sbir import data as style_data
from sketch_tf.families.style_sbir import evaluate as style_eval
from sketch_tf.families.style_sbir.task import StyleSbirTask
from sketch_tf.models import style as style_models
from sketch_tf.train import loop
from sketch_tf.train.config import ConfigError, load_project_config, validate_config
from sketch_tf.train.run import apply_init, load_run, stage_configs, train_run

CONTENTS = ["apple", "boat", "cup"]
STYLES = ["ink", "oil", "water"]
SIZE = 32


def _image(content: int, style: int, variant: int) -> np.ndarray:
    """A 32 px image whose colour says its style and whose drawn bar says its content, so that
    a test can read (content, style) back from the pixels."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:] = (60 + 80 * style, 200 - 60 * style, 40 + 5 * variant)
    img[4 + 8 * content : 10 + 8 * content, 4:28] = 255
    return img


def _sketch(content: int, variant: int) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 255, np.uint8)
    img[4 + 8 * content : 6 + 8 * content, 4 : 20 + variant] = 0
    return img


def write_style_records(path, per_group=3, sketches=2, skip=(), unlabelled=False):
    """Records of CONTENTS x STYLES (`per_group` images each, none for groups in `skip`)
    plus `sketches` sketches per content."""
    with ShardedWriter(path, schema.KIND_LABELLED_IMAGE, classes=CONTENTS) as w:
        for c, cname in enumerate(CONTENTS):
            for v in range(sketches):
                rec = schema.encode_labelled_image(encode_png(_sketch(c, v)), c, cname,
                                                   "sketch", f"{cname}/s{v}")  # fmt: skip
                w.write(rec, class_id=c, class_name=cname, domain="sketch")
            for s, style in enumerate(STYLES):
                if (cname, style) in skip:
                    continue
                for v in range(per_group):
                    labels = {} if unlabelled else {"style_id": s, "content_id": c}
                    rec = schema.encode_labelled_image(
                        encode_png(_image(c, s, v)), c, cname, style, f"{cname}/{style}/{v}",
                        **labels,
                    )  # fmt: skip
                    w.write(rec, class_id=c, class_name=cname, domain=style)
    return str(path)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("style_records")
    write_style_records(root / "train", per_group=3)
    write_style_records(root / "test", per_group=2)
    return str(root)


def _config(root, cache=False):
    config = load_project_config("style_sbir", "synthetic")
    del config.data["synthetic"]
    config.data.root = root
    config.data.image_size = SIZE
    config.data.shuffle_buffer = 4
    config.data.feature_cache = cache
    for section in (config.model.structure, config.model.style):
        section.backbone = "small_cnn"
        section.backbone_kwargs = ml_collections.ConfigDict({"widths": (8, 16), "pooling": "max"})
        section.freeze_trunk = cache
    config.model.structure.projection_dim = 8
    config.model.style.projection_dim = 8
    config.model.style.head_hidden = (16,)
    config.train.update(batch_size=6, log_every=1)
    config.stages.classify.train.update(num_steps=2, checkpoint_every=2)
    config.stages.triplet.train.update(num_steps=2, checkpoint_every=2)
    config.eval.update(batch_size=8, grid_queries=3, grid_top_k=3, baseline_repeats=2)
    return config


def _group_of_pixels(image: np.ndarray) -> tuple[int, int]:
    """(content, style) read back from an `_image` (after the float preprocessing)."""
    px = np.round(image * 255.0).astype(int)
    style = int(np.argmin([abs(px[1, 1, 0] - (60 + 80 * s)) for s in range(3)]))
    bright = np.flatnonzero(px[:, 16].min(axis=-1) > 240)
    return int((bright.min() - 4) // 8), style


@pytest.mark.parametrize("rule", ["same_content", "any"])
@pytest.mark.parametrize("output", ["keys", "images"])
def test_sampled_triplets_follow_the_rules(records, rule, output):
    index = style_data.StyleIndex(os.path.join(records, "train"), STYLES)
    assert index.groups.shape == (9, 2)
    ds = style_data.style_triplet_batches(index, 16, seed=3, negative_rule=rule, output=output,
                                        image_size=SIZE, shuffle_buffer=4)  # fmt: skip
    batch = next(iter(ds))
    c, s = batch["content_id"].numpy(), batch["style_id"].numpy()
    pc, nc, ns = (batch[k].numpy() for k in ("positive_content_id", "negative_content_id",
                                             "negative_style_id"))  # fmt: skip
    assert np.all(pc != c), "positives must differ in content"
    assert np.all(ns != s), "negatives must differ in style"
    if rule == "same_content":
        assert np.all(nc == c)
    else:
        assert not np.all(nc == c), "rule 'any' should also draw other contents (16 draws)"
    if output == "images":
        # The pixels are of the groups the labels say (positives share the anchor's style).
        for i in range(16):
            assert _group_of_pixels(batch["anchor"].numpy()[i]) == (c[i], s[i])
            assert _group_of_pixels(batch["positive"].numpy()[i]) == (pc[i], s[i])
            assert _group_of_pixels(batch["negative"].numpy()[i]) == (nc[i], ns[i])
        assert batch["sketch"].shape == (16, SIZE, SIZE, 3)
    else:
        keys = {k: index.group_keys[g] for g, k in enumerate(map(tuple, index.groups))}
        for i in range(16):
            assert batch["anchor_key"].numpy()[i] in keys[(c[i], s[i])]
            assert batch["positive_key"].numpy()[i] in keys[(pc[i], s[i])]
            assert batch["negative_key"].numpy()[i] in keys[(nc[i], ns[i])]
            assert batch["sketch_key"].numpy()[i] in index.sketch_keys[c[i]]
    again = next(iter(style_data.style_triplet_batches(index, 16, seed=3, negative_rule=rule,
                                                     output=output, image_size=SIZE,
                                                     shuffle_buffer=4)))  # fmt: skip
    np.testing.assert_array_equal(again["content_id"], batch["content_id"])


def test_too_few_images_and_unlabelled_records_fail_clearly(tmp_path):
    # "cup" exists in one style only: no same-content negative for it.
    path = write_style_records(tmp_path / "few", per_group=1,
                               skip=[("cup", "oil"), ("cup", "water")])  # fmt: skip
    index = style_data.StyleIndex(path, STYLES)
    with pytest.raises(
        ValueError, match=r"(?s)too few images.*cup/ink \(1 images\).*no other style"
    ):
        index.triplet_tables("same_content")
    index.triplet_tables("any")  # another style of any content exists
    bad = write_style_records(tmp_path / "bad", per_group=1, unlabelled=True)
    with pytest.raises(ValueError, match=r"record 'apple/ink/0' \(domain 'ink'\) has no style_id"):
        style_data.StyleIndex(bad, STYLES)


def write_sketch_records(path, names, per_class=2):
    """A sketch-only record folder with its own class list (like rasterised Quick, Draw!)."""
    with ShardedWriter(path, schema.KIND_LABELLED_IMAGE, classes=names) as w:
        for i, name in enumerate(names):
            content = {"teacup": 2}.get(name, CONTENTS.index(name) if name in CONTENTS else 0)
            for v in range(per_class):
                rec = schema.encode_labelled_image(encode_png(_sketch(content, v + 3)), i, name,
                                                   "sketch", f"qd/{name}/{v}")  # fmt: skip
                w.write(rec, class_id=i, class_name=name, domain="sketch")
    return str(path)


def test_sketches_from_another_record_folder(records, tmp_path, trained):
    # Its classes: a content under another name ("teacup" = "cup"), one unknown class, and
    # another order than the gallery's.
    names = {"teacup": "cup"}
    folder = write_sketch_records(tmp_path / "qd", ["zebra", "teacup", "apple"])
    with pytest.raises(ValueError, match="'cup' and 'teacup' both"):
        style_data.sketch_classes_of({"classes": ["cup", "teacup"]}, CONTENTS, None, names)
    index = style_data.StyleIndex(os.path.join(records, "train"), STYLES, sketch_dir=folder,
                                sketch_class_names=names)  # fmt: skip
    assert index.sketch_class_of == {2: 1, 0: 2}
    assert sorted(index.sketch_keys) == [0, 2] and len(index.sketch_keys[2]) == 2
    # "boat" has no sketch there: its groups cannot anchor a triplet.
    with pytest.raises(ValueError, match="no 'sketch' record of 'boat'"):
        index.triplet_tables("any")
    _, workdir = trained
    run = load_run(workdir)
    stage = run.config
    stage.data.query_sketches = folder
    stage.data.sketch_class_names = ml_collections.ConfigDict(names)
    result = StyleSbirTask(stage).evaluate(run.models)
    # The apple and cup (teacup) sketches of the other folder, 2 each ("zebra" is no content).
    assert result["scalars"]["num_sketches"] == 4
    # data.classes restricts the sketches of the records themselves too (2 of 3 contents).
    own = load_run(workdir).config
    own.data.classes = ("apple", "cup")
    only = StyleSbirTask(own).evaluate(run.models)["scalars"]
    assert only["num_sketches"] == 4 and only["num_gallery"] == 2 * 3 * 2
    own.data.classes = ("apple", "pear")
    with pytest.raises(ValueError, match=r"data.classes \['pear'\]"):
        StyleSbirTask(own).sketch_records("test")


def test_alpha_outside_unit_interval_is_rejected(records):
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="alpha"):
            style_models.check_alpha(bad)
    config = _config(records)
    config.eval.alpha = 1.5
    with pytest.raises(ConfigError, match=r"eval.alpha must be in \[0, 1\]"):
        validate_config(config)


def test_metric_tables_match_a_hand_computed_case():
    # Gallery: 4 images, (content, style) = (0,0), (0,1), (1,0), (1,1); one sketch of content 0.
    content, style = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    structure_sim = np.array([[0.9, 0.8, 0.1, 0.2]])
    style_sim = np.array(
        [[1.0, 0.1, 0.9, 0.2], [0.1, 1.0, 0.2, 0.9], [0.9, 0.2, 1.0, 0.1], [0.2, 0.9, 0.1, 1.0]]
    )
    exemplars = np.array([[2, 3]])  # style 0: image 2 (content 1); style 1: image 3
    res = style_eval.sketch_style_metrics(structure_sim, style_sim, 0.5, np.array([0]),
                                          exemplars, content, style, 2)  # fmt: skip
    # Query (sketch 0, style 0), exemplar 2 excluded: scores of images 0, 1, 3 =
    # 0.5*[0.9, 0.8, 0.2] + 0.5*[0.9, 0.2, 0.1] = [0.9, 0.5, 0.15]; relevant = image 0 -> AP 1.
    # Query (sketch 0, style 1), exemplar 3 excluded: scores of 0, 1, 2 = 0.5*[0.9, 0.8, 0.1] +
    # 0.5*[0.2, 0.9, 0.1] = [0.55, 0.85, 0.1]; relevant = image 1 -> AP 1.
    assert res["map_all"] == pytest.approx(1.0)
    only_structure = style_eval.sketch_style_metrics(
        structure_sim, style_sim, 1.0, np.array([0]), exemplars, content, style, 2
    )
    # Style 1 query ranks image 0 (0.9) above the relevant image 1 (0.8): AP 1/2.
    assert only_structure["per_class"][0]["map_all"] == pytest.approx(1.0)
    assert only_structure["per_class"][1]["map_all"] == pytest.approx(0.5)
    assert only_structure["map_all"] == pytest.approx(0.75)
    # Sketch-only per style: against style 0's images (0, 2) the sketch ranks 0 first: AP 1.
    per, whole = style_eval.sketch_only_maps(
        np.array([[1.0, 0.0]]), np.array([0]),
        np.array([[1.0, 0.1], [0.9, 0.3], [0.0, 1.0], [0.95, 0.0]]), content, style, ["a", "b"],
    )  # fmt: skip
    # Style 1 gallery = images 1 (content 0) and 3 (content 1, cos 1.0 > 0.95): AP 1/2.
    assert per == {"a": pytest.approx(1.0), "b": pytest.approx(0.5)}
    # Whole gallery by cosine: 3 (1.0), 0 (0.995), 1 (0.949), 2 (0): relevant 0 and 1 at
    # ranks 2 and 3, AP = (1/2 + 2/3) / 2.
    assert whole == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_similarity_rows_rank_like_the_full_matrices():
    rng = np.random.default_rng(2)
    sketches, gallery, styles = rng.normal(size=(5, 4)), rng.normal(size=(12, 4)), rng.normal(
        size=(12, 3))  # fmt: skip
    content, style = np.arange(12) % 3, np.arange(12) // 4
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    ex = style_eval.pick_exemplars(content, style, np.arange(5) % 3, 3, seed=1)
    full = style_eval.sketch_style_metrics(unit(sketches) @ unit(gallery).T,
                                           unit(styles) @ unit(styles).T, 0.4, np.arange(5) % 3,
                                           ex, content, style, 3)  # fmt: skip
    rows = style_eval.sketch_style_metrics(style_eval.SimilarityRows(sketches, gallery),
                                           style_eval.SimilarityRows(styles, styles), 0.4,
                                           np.arange(5) % 3, ex, content, style, 3)  # fmt: skip
    assert rows["map_all"] == pytest.approx(full["map_all"])
    assert rows["per_class"].keys() == full["per_class"].keys()


def test_exemplars_have_the_style_and_another_content():
    content, style = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 1])
    ex = style_eval.pick_exemplars(content, style, np.array([0, 1, 2]), 2, seed=0)
    assert ex.shape == (3, 2)
    for q, c in enumerate([0, 1, 2]):
        for s in range(2):
            assert style[ex[q, s]] == s and content[ex[q, s]] != c


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("style_run"))
    config = _config(records)
    validate_config(config)
    result = train_run(config, workdir, log=lambda *_: None)
    assert result.status == "completed"
    return config, workdir


def test_stage_handover_keeps_the_style_tower(trained):
    config, workdir = trained
    (_, c1, d1), (_, c2, d2) = stage_configs(config, workdir)
    first = load_run(d1, c1)
    # Stage 2 initialised from stage 1, before any step: the style tower is the same.
    task = StyleSbirTask(c2)
    state = loop.build_state(task)
    apply_init(state, c2.init, log=lambda *_: None)
    for a, b in zip(first.models["style_tower"].weights, state.models["style_tower"].weights,
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # After stage 2 (style triplet only), the structure towers are unchanged and the style
    # tower has trained.
    second = load_run(workdir)
    assert second.workdir == d2
    for name in ("structure_sketch", "structure_image"):
        for a, b in zip(first.models[name].weights, second.models[name].weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    moved = [not np.array_equal(a.numpy(), b.numpy()) for a, b in
             zip(first.models["style_tower"].trainable_weights,
                 second.models["style_tower"].trainable_weights, strict=True)]  # fmt: skip
    assert any(moved)


def test_stage_two_refuses_an_unfinished_stage_one(records, tmp_path):
    config = _config(records)
    (_, c1, d1), (_, c2, _) = stage_configs(config, str(tmp_path))
    task = StyleSbirTask(c1)
    result = loop.train(task, d1, stop_after_steps=1, log=lambda *_: None)
    assert result.step == 1
    state = loop.build_state(StyleSbirTask(c2))
    with pytest.raises(ValueError, match=r"unfinished \(step 1 of 2\)"):
        apply_init(state, c2.init, log=lambda *_: None)


def test_losses_of_each_stage(records):
    config = _config(records)
    (_, c1, _), (_, c2, _) = stage_configs(config, "/unused")
    for stage, expected in ((c1, {"structure", "style_class"}), (c2, {"style_triplet"})):
        task = StyleSbirTask(stage)
        models = task.build_models()
        batch = next(iter(task.build_train_dataset(6, seed=0, models=models)))
        out = task.compute_losses(models, batch, loop.LossContext(6, 1))
        assert set(out) == expected | {"total"}
        assert all(np.isfinite(float(v)) for v in out.values())
        trainable = set(task.trainable_models(models))
        if stage is c2:
            assert trainable == {"style_tower"}
            # The explicit (A, P, N) triplets and the mined ones (the default) are different,
            # finite terms, under both negative rules.
            assert stage.loss.style_mining == "semi_hard"
            for rule in ("same_content", "any"):
                stage.data.negative_rule = rule
                terms = {}
                for mining in ("", "semi_hard"):
                    stage.loss.style_mining = mining
                    terms[mining] = float(StyleSbirTask(stage).compute_losses(
                        models, batch, loop.LossContext(6, 1))["style_triplet"])  # fmt: skip
                assert all(np.isfinite(v) for v in terms.values())
                assert terms[""] != pytest.approx(terms["semi_hard"])
        else:
            assert trainable == {"structure_sketch", "structure_image", "style_tower",
                                 "style_classifier"}  # fmt: skip


def test_cached_features_give_the_same_losses_and_evaluation(records):
    config = _config(records, cache=True)
    validate_config(config)
    (_, c1, _), _ = stage_configs(config, "/unused")
    task = StyleSbirTask(c1)
    models = task.build_models()
    cached = next(iter(task.build_train_dataset(6, seed=0, models=models)))
    assert "anchor_style_features" in cached
    ctx = loop.LossContext(6, 1)
    with_cache = task.compute_losses(models, cached, ctx)
    # The same images through the whole towers: look the keys up in the records.
    index = task.style_index("train")
    images = {}
    for rec in pipeline.labelled_dataset(task.records_dir("train"), 64, image_size=SIZE):
        for k, img in zip(rec["image_key"].numpy(), rec["image"].numpy(), strict=True):
            images[int(k)] = img
    plain = {k: v for k, v in cached.items() if "features" not in k}
    for role in ("sketch", "anchor", "positive", "negative"):
        plain[role] = tf.constant(np.stack([images[int(k)] for k in cached[f"{role}_key"]]))
    task_plain = StyleSbirTask(_config(records))
    task_plain.config = c1  # same config, but the batch carries images: the towers run
    without = task_plain.compute_losses(models, plain, ctx)
    for key in with_cache:
        np.testing.assert_allclose(float(with_cache[key]), float(without[key]), rtol=1e-4)
    assert len(index.groups) == 9


def test_gallery_through_the_cache_equals_the_towers(records):
    # The export / index gallery of a cached task: the heads on the cached trunk features of
    # the folder's images (the test records, and another folder), as the towers embed it.
    (_, c1, _), _ = stage_configs(_config(records, cache=True), "/unused")
    cached = StyleSbirTask(c1)
    plain_config = copy.deepcopy(c1)
    plain_config.data.feature_cache = False
    plain = StyleSbirTask(plain_config)
    models = cached.build_models()
    for which in ("test", "train"):
        folder = cached.records_dir(which)
        got = gallery_lib.family_gallery(cached, models, folder)
        want = gallery_lib.family_gallery(plain, models, folder)
        for key in ("keys", "labels", "domains", "size", "metric"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_allclose(got["vectors"], want["vectors"], rtol=1e-5, atol=1e-6)
        entries = cached.gallery_caches(models, folder)
        assert sorted(entries) == ["structure_image", "style"]
        assert all(e.path.startswith(os.path.join(folder, "cache")) for e in entries.values())
    # A run of data.classes: its default gallery = the test images of those classes, the
    # image set evaluation cached (its caches reused as they are), the towers' rows.
    c1.data.classes = plain_config.data.classes = ("apple", "cup")
    cached, plain = StyleSbirTask(c1), StyleSbirTask(plain_config)
    classes = cached.retrieval().gallery_classes()
    assert classes == ("apple", "cup")
    folder = cached.records_dir("test")
    evaluated = cached.feature_caches(models, "test")
    got = gallery_lib.family_gallery(cached, models, folder, classes)
    want = gallery_lib.family_gallery(plain, models, folder, classes)
    assert set(got["labels"]) == {"apple", "cup"} and got["classes"] == ["apple", "cup"]
    np.testing.assert_array_equal(got["keys"], want["keys"])
    np.testing.assert_allclose(got["vectors"], want["vectors"], rtol=1e-5, atol=1e-6)
    entries = cached.gallery_caches(models, folder, classes)
    assert all(entries[r] is evaluated[r] for r in ("structure_image", "style"))


def test_evaluate_writes_tables_and_pictures(trained):
    config, workdir = trained
    run = load_run(workdir)
    result = run.task.evaluate(run.models, run.workdir)
    s = result["scalars"]
    for key in ("sketch_map", "sketch_style_map", "random/sketch_style_map",
                "structure_only/sketch_style_map", "style_only/sketch_style_map",
                "non_learned/sketch_style_map", "hog/sketch_map", "random/sketch_map"):  # fmt: skip
        assert 0.0 <= s[key] <= 1.0, key
    assert s["alpha_1/sketch_style_map"] == pytest.approx(s["structure_only/sketch_style_map"])
    assert s["alpha_0/sketch_style_map"] == pytest.approx(s["style_only/sketch_style_map"])
    assert s["num_sketch_style_queries"] == 3 * 2 * 3  # 6 test sketches x 3 styles
    table = result["tables"]["sketch + style mAP per content x style, model (alpha=0.5)"]
    assert [r[0] for r in table["rows"]] == CONTENTS + ["mean"]
    for name in ("sketch_style_map", "query_grid"):
        assert os.path.isfile(result["files"][name])
    assert "sketch + style mAP" in open(result["files"]["tables"]).read()
    other = style_eval.StyleSbirEvaluator(run.task, alpha=1.0).run(run.models)
    assert other["scalars"]["sketch_style_map"] == pytest.approx(
        s["structure_only/sketch_style_map"]
    )
    with pytest.raises(ValueError, match="alpha"):
        style_eval.StyleSbirEvaluator(run.task, alpha=2.0)


def test_export_round_trip_of_every_signature(trained, tmp_path):
    from sketch_tf.export.serving import export_saved_model, run_gallery

    _, workdir = trained
    run = load_run(workdir)
    gallery = run_gallery(run, "test")  # the run's test records, all style domains
    path = export_saved_model(run.task, run.models, str(tmp_path / "export"), run.step,
                              gallery=gallery)  # fmt: skip
    loaded = tf.saved_model.load(path)
    expected = {
        "serving_default", "embed_structure_sketch", "embed_structure_image", "embed_style",
        "embed_structure_sketch_floats", "embed_structure_image_floats", "embed_style_floats",
        "score", "score_floats", "retrieve", "retrieve_floats", "search",
    }  # fmt: skip
    assert set(loaded.signatures) == expected
    towers = run.task.towers(run.models)
    sketch = _sketch(1, 0)
    image = _image(2, 1, 0)
    png = lambda a: tf.constant([encode_png(a)])  # noqa: E731
    floats = lambda a: tf.constant(a[None].astype(np.float32) / 255.0)  # noqa: E731
    for name, role, arr in (
        ("embed_structure_sketch", "structure_sketch", sketch),
        ("embed_structure_image", "structure_image", image),
        ("embed_style", "style", image),
    ):
        direct = towers[role](floats(arr), training=False).numpy()
        np.testing.assert_allclose(loaded.signatures[name](images=png(arr))["embedding"], direct,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(loaded.signatures[f"{name}_floats"](images=floats(arr))[
            "embedding"], direct, rtol=1e-4, atol=1e-5)  # fmt: skip
    g_structure = towers["structure_image"](floats(image), training=False)
    g_style = towers["style"](floats(image), training=False)
    k = towers["structure_sketch"](floats(sketch), training=False)
    for alpha in (0.0, 0.3, 1.0):
        got = loaded.signatures["score"](sketches=png(sketch), exemplars=png(image),
                                         gallery_structure=g_structure, gallery_style=g_style,
                                         alpha=tf.constant(alpha))["scores"]  # fmt: skip
        want = alpha * tf.reduce_sum(k * g_structure) + (1 - alpha) * tf.reduce_sum(
            g_style * g_style
        )
        np.testing.assert_allclose(got.numpy()[0, 0], want.numpy(), rtol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="alpha"):
        loaded.signatures["score"](sketches=png(sketch), exemplars=png(image),
                                   gallery_structure=g_structure, gallery_style=g_style,
                                   alpha=tf.constant(1.5))  # fmt: skip
    with pytest.raises(tf.errors.InvalidArgumentError, match="exemplars"):
        loaded.signatures["score"](sketches=png(sketch), exemplars=tf.constant([b"not an image"]),
                                   gallery_structure=g_structure, gallery_style=g_style,
                                   alpha=tf.constant(0.5))  # fmt: skip
    assert os.path.isfile(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))

    # retrieve: the top-k of alpha * cos(structure) + (1 - alpha) * cos(style) over the gallery
    # embedded at export time, equal to `score` against the same gallery embeddings.
    e = run.task.towers(run.models)
    style_doms = list(run.task.styles())
    records = list(pipeline.labelled_records(run.task.records_dir("test"), style_doms))
    assert gallery.size == len(records) and gallery.manifest["step"] == run.step
    imgs = tf.stack([pipeline.preprocess(r["image"], False, 32, False) for r in records])
    gs, gx = e["structure_image"](imgs, training=False), e["style"](imgs, training=False)
    for alpha in (0.0, 0.7, 1.0):
        full = loaded.signatures["score"](
            sketches=png(sketch),
            exemplars=png(image),
            gallery_structure=gs,
            gallery_style=gx,
            alpha=tf.constant(alpha),
        )["scores"].numpy()[0]
        out = loaded.signatures["retrieve"](
            sketches=png(sketch), exemplars=png(image), alpha=tf.constant(alpha), k=tf.constant(4)
        )
        order = np.lexsort((np.arange(len(full)), -full))[:4]
        np.testing.assert_allclose(out["scores"].numpy()[0], full[order], atol=1e-5)
        got_ids = out["ids"].numpy()[0]
        np.testing.assert_allclose(full[got_ids], full[order], atol=1e-5)  # ties may swap
        assert [x.decode() for x in out["labels"].numpy()[0]] == [
            records[i]["class_name"].numpy().decode() for i in got_ids
        ]
    many = loaded.signatures["retrieve_floats"](
        sketches=floats(sketch), exemplars=floats(image), alpha=tf.constant(0.5), k=tf.constant(999)
    )
    assert int(many["k"]) == len(records) and bool(many["clipped"])


def test_two_stages_under_two_logical_cpus_give_the_losses_of_one_replica(
    records, tmp_path, two_cpu_strategy
):
    # Mined structure and style triplets gather the global batch across the two replicas;
    # the cache lookups live in the input pipeline that MirroredStrategy splits. (The
    # trainable trunks with synchronised BatchNorm: tests/test_multi_worker.py, 2 workers.)
    from tests.distributed import assert_same_losses_as_one_replica

    config = _config(records, cache=True)
    config.data.cache_dir = str(tmp_path / "cache")
    figures = assert_same_losses_as_one_replica(config, tmp_path, two_cpu_strategy)
    assert figures["losses"] >= 8  # both stages, 2 steps each, >= 2 terms


def test_deterministic_runs_are_bit_identical(records, tmp_path):
    from tests.determinism import assert_bit_identical_runs

    # Both stages (classification, then triplet from its weights).
    assert assert_bit_identical_runs(_config(records), tmp_path) >= 2
