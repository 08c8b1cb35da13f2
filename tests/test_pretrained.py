"""ImageNet weights by name (`backbone_weights="imagenet"`), offline: files in the published
formats are written here from randomly initialised reference models, put in a temporary
Keras cache under their published names with their hashes, and loaded by the `imagenet` path;
our towers (normalisation included) must give the reference model's outputs."""

import dataclasses
import os

import keras
import ml_collections
import numpy as np
import pytest

from sketch_tf.models import backbones, pretrained
from sketch_tf.models.backbones import backbone_kwargs, backbone_weights_problems, build_backbone
from tests.pretrained_files import (
    install,
    patch_hash,
    torch_state_of,
    write_keras_h5,
    write_torch_zip,
)

SIZE = 32


def _image(seed=0, size=SIZE):
    """A [1, S, S, 3] RGB image in [0, 1]."""
    return np.random.default_rng(seed).random((1, size, size, 3), dtype=np.float32)


def _close(ours, ref):
    """Equal to 1e-5 of the reference's scale (Caffe inputs are 0-255: outputs in the 100s)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


def _keras_reference(name):
    """(random keras.applications model as the published file holds it, its features on
    [0, 1] images through its own preprocess_input, our builder's kwargs)."""
    shape = (SIZE, SIZE, 3)
    keras.utils.set_random_seed(3)
    if name == "vgg16":
        ref = keras.applications.VGG16(include_top=False, weights=None, input_shape=shape)
        conv = keras.Model(ref.input, ref.get_layer("block5_conv3").output)

        def features(x):
            return conv(keras.applications.vgg16.preprocess_input(255.0 * x))

        return ref, features, {"pooling": ""}
    if name == "densenet121":
        ref = keras.applications.DenseNet121(
            include_top=False, weights=None, input_shape=shape, pooling="max"
        )
        return ref, lambda x: ref(keras.applications.densenet.preprocess_input(255.0 * x)), {}
    ref = keras.applications.MobileNetV3Small(
        input_shape=shape, include_top=False, weights=None, pooling="avg"
    )
    # The published model includes its [-1, 1] rescaling (preprocess_input is the identity).
    return ref, lambda x: ref(keras.applications.mobilenet_v3.preprocess_input(255.0 * x)), {}


@pytest.mark.parametrize("name", ["vgg16", "densenet121", "mobilenet_v3_small"])
def test_keras_imagenet_weights_give_the_reference_features(name, tmp_path, monkeypatch):
    ref, features, kwargs = _keras_reference(name)
    published = tmp_path / "published.h5"
    write_keras_h5(ref, published)
    cached = install(monkeypatch, tmp_path / "keras_home", name, published)
    ours = build_backbone(name, SIZE, weights_path="imagenet", **kwargs)
    x = _image()
    _close(ours(x), features(x))
    # Nothing besides the file in the cache (no download happened, nothing was written).
    assert os.listdir(os.path.dirname(cached)) == [os.path.basename(cached)]


def test_keras_random_init_keeps_its_old_input():
    # Without ImageNet weights the towers keep the input they had (old runs rebuild alike).
    names = [ly.name for ly in build_backbone("densenet121", SIZE).layers]
    assert "torch_preprocess" not in names
    assert "caffe_preprocess" in [ly.name for ly in build_backbone("vgg16", SIZE).layers]


def _torch_layout_case(name, tmp_path, monkeypatch, size):
    """A random torchvision-layout backbone, its state dict (plus a classifier the backbone
    drops) written in torch's zip format and installed in the cache."""
    keras.utils.set_random_seed(4)
    source = build_backbone(name, size)
    for v in source.weights:  # BatchNorm statistics too, so that they are checked
        if "moving_variance" in v.path:
            v.assign(np.random.default_rng(5).uniform(0.5, 2.0, v.shape).astype(np.float32))
        elif "moving_mean" in v.path:
            v.assign(np.random.default_rng(6).normal(size=v.shape).astype(np.float32))
    extra = {"classifier.1.weight": np.ones((4, 9), np.float32), "fc.bias": np.zeros(3, np.float32)}
    published = tmp_path / "published.pth"
    write_torch_zip(published, torch_state_of(source, extra))
    cached = install(monkeypatch, tmp_path / "keras_home", name, published)
    return source, cached


@pytest.mark.parametrize("name,size", [("alexnet", 64), ("vgg11", 32), ("resnet18", 32)])
def test_torchvision_file_read_converted_once_and_normalised(name, size, tmp_path, monkeypatch):
    """Without torch: a file in torch's zip layout, written here, is read, converted to our
    layout and cached; the tower normalises [0, 1] pixels with the torch mean / std first.
    (test_torchvision_weights_give_the_torchvision_features checks against torch itself.)"""
    source, cached = _torch_layout_case(name, tmp_path, monkeypatch, size)
    ours = build_backbone(name, size, weights_path="imagenet")
    x = _image(1, size)
    mean, std = np.array(pretrained.TORCH_MEAN), np.array(pretrained.TORCH_STD)
    _close(ours(x), source(((x - mean) / std).astype(np.float32)))
    converted = pretrained.converted_path(cached)
    assert os.path.isfile(converted)
    # A second run reads the converted copy only: the .pth may even be gone.
    os.remove(cached)
    pretrained._cached_layer_arrays.cache_clear()
    again = build_backbone(name, size, weights_path="imagenet")
    _close(again(x), ours(x))


def test_torchvision_weights_give_the_torchvision_features(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch", reason="torch (CPU) is an optional test extra")
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    for name, size in (("alexnet", 64), ("vgg11", 32), ("resnet18", 32)):
        torch.manual_seed(0)
        net = getattr(torchvision.models, name)(weights=None).eval()
        published = tmp_path / f"{name}.pth"
        torch.save(net.state_dict(), published)
        install(monkeypatch, tmp_path / f"home_{name}", name, published)
        ours = build_backbone(name, size, weights_path="imagenet")
        x = _image(2, size)
        t = (torch.from_numpy(x).permute(0, 3, 1, 2) - torch.tensor(pretrained.TORCH_MEAN)[
            :, None, None]) / torch.tensor(pretrained.TORCH_STD)[:, None, None]  # fmt: skip
        with torch.no_grad():
            if name == "resnet18":
                body = torch.nn.Sequential(*list(net.children())[:-1])
                ref = body(t).flatten(1).numpy()
            else:
                ref = net.avgpool(net.features(t)).permute(0, 2, 3, 1).flatten(1).numpy()
        _close(ours(x), ref)


def test_torch_zip_reader_refuses_code(tmp_path):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(pretrained.PretrainedWeightsError, match="not part of a plain state dict"):
        pretrained.read_torch_state_dict(str(path))


def test_legacy_torch_file_without_torch_names_the_install(tmp_path):
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed: legacy files are read with it")
    except ImportError:
        pass
    path = tmp_path / "old.pth"
    path.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"legacy.*sketch_tf\[torch\]"):
        pretrained.read_torch_state_dict(str(path))


# ---- fetching: offline, bad checksum, stale cache ------------------------------------------


def test_offline_error_names_everything_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    url = (tmp_path / "no_such_server" / "densenet.h5").as_uri()
    ws = pretrained.IMAGENET_WEIGHTS["densenet121"]
    monkeypatch.setitem(
        pretrained.IMAGENET_WEIGHTS, "densenet121", dataclasses.replace(ws, url=url)
    )
    pretrained._cached_layer_arrays.cache_clear()
    target = tmp_path / "home" / "models" / ws.file_name
    with pytest.raises(pretrained.PretrainedWeightsError) as info:
        build_backbone("densenet121", SIZE, weights_path="imagenet")
    message = str(info.value)
    for part in ("'densenet121'", url, ws.file_hash, str(target), "download failed"):
        assert part in message
    assert os.listdir(target.parent) == []


def test_bad_checksum_error_and_nothing_left(tmp_path, monkeypatch):
    served = tmp_path / "server" / "resnet18-f37072fd.pth"
    served.parent.mkdir()
    served.write_bytes(b"not the weights")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    ws = pretrained.IMAGENET_WEIGHTS["resnet18"]
    monkeypatch.setitem(
        pretrained.IMAGENET_WEIGHTS, "resnet18", dataclasses.replace(ws, url=served.as_uri())
    )
    target = tmp_path / "home" / "models" / ws.file_name
    with pytest.raises(pretrained.PretrainedWeightsError) as info:
        pretrained.fetch_weights("resnet18")
    message = str(info.value)
    for part in ("'resnet18'", served.as_uri(), "sha256 starting with f37072fd", str(target),
                 "checksum"):  # fmt: skip
        assert part in message
    assert os.listdir(target.parent) == []


def test_download_verifies_then_replaces_a_stale_file(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    ref = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), include_top=False, weights=None
    )
    served = tmp_path / "server.h5"
    write_keras_h5(ref, served)
    patch_hash(monkeypatch, "mobilenet_v3_small", served, url=served.as_uri())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    ws = pretrained.IMAGENET_WEIGHTS["mobilenet_v3_small"]
    target = tmp_path / "home" / "models" / ws.file_name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    assert pretrained.fetch_weights("mobilenet_v3_small") == str(target)
    assert target.read_bytes() == served.read_bytes()
    assert os.listdir(target.parent) == [ws.file_name]


# ---- config: one function for every family --------------------------------------------------


def test_backbone_kwargs_of_each_section_layout():
    zooms = ml_collections.ConfigDict(
        dict(backbone="vgg16", backbone_weights="imagenet", backbone_widths=(8, 16),
             backbone_pooling="flatten", backbone_cut="block3", backbone_freeze_blocks=3)
    )  # fmt: skip
    assert backbone_kwargs(zooms) == {
        "pooling": "flatten", "cut": "block3", "freeze_blocks": 3, "weights_path": "imagenet"
    }  # fmt: skip
    small = ml_collections.ConfigDict(
        dict(backbone="small_cnn", backbone_weights="", backbone_widths=(8, 16),
             backbone_pooling="", backbone_cut="", backbone_freeze_blocks=0)
    )  # fmt: skip
    assert backbone_kwargs(small) == {"widths": (8, 16)}
    towers = ml_collections.ConfigDict(
        dict(backbone="densenet121", backbone_kwargs={"pooling": "avg"}, backbone_weights="w.npz")
    )
    assert backbone_kwargs(towers) == {"pooling": "avg", "weights_path": "w.npz"}
    for name in ("small_cnn", "vgg16_hed"):
        bad = ml_collections.ConfigDict(
            dict(backbone=name, backbone_kwargs={}, backbone_weights="imagenet")
        )
        with pytest.raises(ValueError, match=f"{name}"):
            backbone_kwargs(bad)


def test_backbone_weights_problems(tmp_path):
    assert backbone_weights_problems("densenet121", "imagenet") == []
    assert backbone_weights_problems("vgg16", "") == []
    (problem,) = backbone_weights_problems("small_cnn", "imagenet", "model.style.backbone_weights")
    assert "model.style.backbone_weights='imagenet'" in problem and "'small_cnn'" in problem
    (problem,) = backbone_weights_problems("vgg16_hed", "imagenet")
    assert "backbone 'vgg16'" in problem
    (problem,) = backbone_weights_problems("vgg16", str(tmp_path / "nope.npz"))
    assert "does not exist" in problem
    with pytest.raises(ValueError, match="backbone 'vgg16'"):
        backbones.build_vgg16_hed(SIZE, weights_path="imagenet")
    with pytest.raises(ValueError, match="no published ImageNet weights"):
        build_backbone("small_cnn", SIZE, weights_path="imagenet")


# ---- the papers' recipes start from ImageNet ------------------------------------------------

RECIPES = {
    ("zs_sbir", "upstream"): ("model",),
    ("zs_sbir", "sketchy"): ("model",),
    ("zs_sbir", "tuberlin"): ("model",),
    ("zooms", "sketchzooms"): ("model",),
    ("style_sbir", "bam"): ("model.structure", "model.style"),
}


@pytest.mark.parametrize("family,variant", sorted(RECIPES))
def test_paper_recipes_start_from_imagenet_and_fine_tune(family, variant):
    from sketch_tf.train.config import load_project_config

    config = load_project_config(family, variant)
    for path in RECIPES[family, variant]:
        section = config
        for part in path.split("."):
            section = section[part]
        assert backbone_kwargs(section)["weights_path"] == "imagenet"
        assert section.backbone in pretrained.IMAGENET_WEIGHTS
        if "freeze_trunk" in section:
            assert section.freeze_trunk is False
        if "backbone_freeze_blocks" in section:
            assert not section.backbone_freeze_blocks


def test_sketchzooms_recipe_builds_from_a_prefilled_cache_offline(tmp_path, monkeypatch):
    from sketch_tf.families.zooms.task import ZoomsTask
    from sketch_tf.train.config import load_project_config

    source, _ = _torch_layout_case("alexnet", tmp_path, monkeypatch, 64)

    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(pretrained.keras.utils, "get_file", no_download)
    config = load_project_config("zooms", "sketchzooms")
    config.zooms.view_size = 64  # the recipe's 224 px views, smaller for the test
    model = ZoomsTask(config).build_models()["zooms"]
    trunk = model.get_layer("alexnet")
    assert "torch_preprocess" in [ly.name for ly in trunk.layers]
    for name in ("features_0", "features_10"):
        for ours, ref in zip(trunk.get_layer(name).weights, source.get_layer(name).weights,
                             strict=True):  # fmt: skip
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


#: docs/weights.md's offline fallback of each recipe (command-line overrides).
FALLBACKS = {
    ("zs_sbir", "upstream"): {"model.backbone": "vgg16_hed", "model.backbone_weights": ""},
    ("zs_sbir", "sketchy"): {"model.backbone": "vgg16_hed", "model.backbone_weights": ""},
    ("zs_sbir", "tuberlin"): {"model.backbone": "vgg16_hed", "model.backbone_weights": ""},
    ("zooms", "sketchzooms"): {"model.backbone": "vgg16_hed", "model.backbone_weights": ""},
    ("style_sbir", "bam"): {
        "model.structure.backbone": "vgg16_hed",
        "model.style.backbone": "vgg16_hed",
        "model.structure.backbone_weights": "",
        "model.style.backbone_weights": "",
    },  # fmt: skip
    ("fg_sbir", "shoes_gpu"): {"model.backbone": "vgg16", "model.backbone_weights": "imagenet"},
}
#: Problems a fresh checkout has with these variants (files and records a user supplies).
USER_FILES = ("data.class_embeddings", "data.train_sketches", "data.query_sketches")


@pytest.mark.parametrize("family,variant", sorted(FALLBACKS))
def test_documented_fallbacks_validate(family, variant):
    from sketch_tf import families
    from sketch_tf.train.config import load_project_config

    config = load_project_config(family, variant)
    with config.unlocked():
        for key, value in FALLBACKS[family, variant].items():
            *parents, last = key.split(".")
            section = config
            for part in parents:
                section = section[part]
            section[last] = value
    problems = families.get_task_class(family).validate_config(config)
    assert [p for p in problems if not any(k in p for k in USER_FILES)] == []


def test_fg_sbir_split_towers_take_the_imagenet_vgg16(tmp_path, monkeypatch):
    from sketch_tf.models import fg_sbir

    keras.utils.set_random_seed(7)
    ref = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    published = tmp_path / "published.h5"
    write_keras_h5(ref, published)
    install(monkeypatch, tmp_path / "keras_home", "vgg16", published)
    tower = fg_sbir.build_fg_tower(
        SIZE, backbone="vgg16", weights_path="imagenet", frozen_blocks=2, grid=1
    )
    trunk, x = fg_sbir.trunk_of(tower), _image(3)
    # The split point (after block 2 and its pool) is Keras' block3_pool input.
    reference = keras.Model(ref.input, ref.get_layer("block2_pool").output)
    _close(trunk(x), reference(keras.applications.vgg16.preprocess_input(255.0 * x)))
    assert not trunk.trainable_weights


def test_exported_imagenet_tower_takes_unit_pixels(tmp_path, monkeypatch):
    """The normalisation is part of the model: a SavedModel and a .keras file of an ImageNet
    tower take [0, 1] pixels and give the tower's outputs (no weights fetched to reload)."""
    import tensorflow as tf

    _torch_layout_case("alexnet", tmp_path, monkeypatch, 64)
    ours = build_backbone("alexnet", 64, weights_path="imagenet")
    x = _image(4, 64)
    ours.export(str(tmp_path / "saved"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    _close(reloaded.serve(tf.constant(x)), ours(x))
    ours.save(tmp_path / "tower.keras")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_home"))
    _close(keras.models.load_model(tmp_path / "tower.keras")(x), ours(x))
    layer = backbones.TorchPreprocess(mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0))
    clone = backbones.TorchPreprocess.from_config(layer.get_config())
    np.testing.assert_allclose(clone(np.ones((1, 1, 1, 3), np.float32)).numpy().ravel(),
                               [0.9, 0.4, 0.175], rtol=1e-6)  # fmt: skip
