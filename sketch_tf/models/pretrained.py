"""Published ImageNet weights of the backbones: where they are, how they are fetched and
cached, and how they become our layers' weights.

`IMAGENET_WEIGHTS` maps a backbone name (`backbones.BACKBONES`) to the published file of its
architecture:

| backbone             | from               | input normalisation            |
|----------------------|--------------------|--------------------------------|
| `vgg16`              | keras.applications | Caffe: BGR, 0-255, minus mean  |
| `densenet121`        | keras.applications | torch: (x - mean) / std        |
| `mobilenet_v3_small` | keras.applications | [-1, 1] (in the model already) |
| `alexnet`            | torchvision        | torch                          |
| `vgg11`              | torchvision        | torch                          |
| `resnet18`           | torchvision        | torch                          |

The normalisation is each weight set's own (keras.applications' `preprocess_input` modes;
torchvision's `ImageClassification` transform); the backbone builders put it inside the model
as its first layer, so models keep taking RGB in [0, 1].

Fetching (`fetch_weights`) is what Keras applications and torch.hub do: the file lives in the
Keras cache, ``$KERAS_HOME/models`` (``~/.keras/models`` by default, where
``keras.applications.VGG16(weights="imagenet")`` puts the same file), and is downloaded with
`keras.utils.get_file` when absent. The download goes to a temporary folder inside the cache
and is moved into place only after its checksum matched (the full md5 that Keras publishes;
for torchvision the sha256 prefix in the file name, the check torch.hub makes), so the cache
never holds a half-written or wrong file. Offline, copy the file by hand to the path the
error names.

A torchvision ``.pth`` is converted once into our layer layout and cached beside it as
``<file stem>.sketch_tf.npz``; later builds read only that. The ``.pth`` (torch's zip
format) is read by `read_torch_state_dict` without PyTorch: its pickle is unpickled with an
allow-list of the few globals a state dict needs (the idea of ``torch.load(weights_only=True)``),
so a file cannot run code. Only files in torch's legacy (pre-1.6, non-zip) format need
PyTorch itself.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import keras
import numpy as np

from sketch_tf.core.files import atomic_file

__all__ = [
    "IMAGENET",
    "IMAGENET_WEIGHTS",
    "TORCH_MEAN",
    "TORCH_STD",
    "KERAS_VGG16_MEAN_BGR",
    "PretrainedWeightsError",
    "WeightSet",
    "converted_path",
    "fetch_weights",
    "imagenet_layer_arrays",
    "keras_cache_dir",
    "load_imagenet_weights",
    "read_torch_state_dict",
    "torch_layer_arrays",
]

#: The `backbone_weights` value that selects a backbone's published ImageNet weights.
IMAGENET = "imagenet"
#: ImageNet RGB mean and std of [0, 1] pixels (torchvision's transforms, Keras' "torch" mode).
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
#: BGR mean (0-255) of keras.applications' "caffe" mode (VGG16, ResNet50).
KERAS_VGG16_MEAN_BGR = (103.939, 116.779, 123.68)


class PretrainedWeightsError(RuntimeError):
    """Published weights could not be fetched, verified or read (the message says which
    backbone, URL, expected hash and cache path)."""


@dataclasses.dataclass(frozen=True)
class WeightSet:
    """One published weights file.

    Attributes:
      backbone: the `BACKBONES` name it fills.
      source: "keras" (a keras.applications .h5) or "torchvision" (a .pth state dict).
      file_name: the published file name, also its name in the cache.
      url: where it is published.
      file_hash: the full md5 (Keras) or the sha256 prefix in the file name (torchvision).
      hash_algorithm: "md5" (compared whole) or "sha256_prefix".
      input_norm: "caffe", "torch" or "pm1" ([-1, 1]).
      download_mb: approximate size of the download in MB (10^6 bytes).
    """

    backbone: str
    source: str
    file_name: str
    url: str
    file_hash: str
    hash_algorithm: str
    input_norm: str
    download_mb: float


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_TORCHVISION = "https://download.pytorch.org/models/"


def _keras_set(backbone, folder, file_name, md5, norm, mb):
    return WeightSet(backbone, "keras", file_name, f"{_KERAS_APPS}{folder}/{file_name}", md5,
                     "md5", norm, mb)  # fmt: skip


def _torchvision_set(backbone, file_name, mb):
    # torch.hub's rule: the file name ends in "-<first hex digits of its sha256>.pth".
    prefix = file_name.rsplit("-", 1)[1].split(".", 1)[0]
    return WeightSet(backbone, "torchvision", file_name, f"{_TORCHVISION}{file_name}", prefix,
                     "sha256_prefix", "torch", mb)  # fmt: skip


#: backbone name -> its published ImageNet weights (URLs and hashes as keras.applications
#: 3.x and torchvision 0.13+ publish them; sizes from the parameter counts, float32).
IMAGENET_WEIGHTS: dict[str, WeightSet] = {
    "vgg16": _keras_set(
        "vgg16", "vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc", "caffe", 58.9,
    ),
    "densenet121": _keras_set(
        "densenet121", "densenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738", "torch", 29.1,
    ),
    "mobilenet_v3_small": _keras_set(
        "mobilenet_v3_small", "mobilenet_v3",
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836", "pm1", 3.9,
    ),
    "alexnet": _torchvision_set("alexnet", "alexnet-owt-7be5be79.pth", 244.4),
    "vgg11": _torchvision_set("vgg11", "vgg11-8a719046.pth", 531.5),
    "resnet18": _torchvision_set("resnet18", "resnet18-f37072fd.pth", 46.8),
}  # fmt: skip

#: keras.applications constructor of each Keras weight set (include_top=False, weights=None).
_KERAS_REFERENCE = {
    "vgg16": lambda shape: keras.applications.VGG16(
        include_top=False, weights=None, input_shape=shape
    ),
    "densenet121": lambda shape: keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=shape
    ),
    "mobilenet_v3_small": lambda shape: keras.applications.MobileNetV3Small(
        input_shape=shape, include_top=False, weights=None, include_preprocessing=False
    ),
}

_TORCH_INSTALL_HINT = (
    "pip install 'sketch_tf[torch]' (or: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu)"
)


def keras_cache_dir(cache_dir: str | None = None) -> str:
    """The folder where Keras caches model weights: ``<cache_dir>/models``, else
    ``$KERAS_HOME/models`` (read now, not at import), else ``~/.keras/models`` (``/tmp/.keras``
    when the home folder is not writable, as Keras does)."""
    return os.path.join(_cache_root(cache_dir), "models")


def _cache_root(cache_dir: str | None) -> str:
    base = cache_dir or os.environ.get("KERAS_HOME")
    if not base:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    return os.path.abspath(os.path.expanduser(os.fspath(base)))


def weight_set(backbone: str) -> WeightSet:
    """`IMAGENET_WEIGHTS[backbone]`, or a ValueError naming the backbones that have one."""
    if backbone not in IMAGENET_WEIGHTS:
        raise ValueError(
            f"backbone {backbone!r} has no published ImageNet weights "
            f"(backbone_weights={IMAGENET!r} works for {sorted(IMAGENET_WEIGHTS)}); pass a "
            "local weights file or leave backbone_weights empty"
        )
    return IMAGENET_WEIGHTS[backbone]


def _file_digest(path: str, algorithm: str) -> str:
    h = hashlib.md5() if algorithm == "md5" else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_matches(path: str, ws: WeightSet) -> tuple[bool, str]:
    digest = _file_digest(path, "md5" if ws.hash_algorithm == "md5" else "sha256")
    if ws.hash_algorithm == "md5":
        return digest == ws.file_hash, digest
    return digest.startswith(ws.file_hash), digest


def _expected(ws: WeightSet) -> str:
    if ws.hash_algorithm == "md5":
        return f"md5 {ws.file_hash}"
    return f"sha256 starting with {ws.file_hash}"


def fetch_weights(backbone: str, cache_dir: str | None = None) -> str:
    """The path of `backbone`'s published ImageNet file in the Keras cache, downloaded and
    verified first when it is not there (see the module docstring).

    A cached file whose checksum does not match is downloaded again (as `keras.utils.get_file`
    does); it is replaced only by a verified download.

    Args:
      backbone: a key of `IMAGENET_WEIGHTS`.
      cache_dir: the Keras cache root (`keras_cache_dir`); None = ``$KERAS_HOME`` / ``~/.keras``.

    Raises:
      ValueError: `backbone` has no published weights.
      PretrainedWeightsError: the download failed (offline) or its checksum did not match;
        the message names the backbone, the URL, the expected hash and the cache path to
        copy the file to by hand. Nothing is left in the cache.
    """
    ws = weight_set(backbone)
    folder = keras_cache_dir(cache_dir)
    target = os.path.join(folder, ws.file_name)
    stale = ""
    if os.path.isfile(target):
        ok, digest = _hash_matches(target, ws)
        if ok:
            return target
        stale = f" (the cached {target} has {digest}: not it, so it was downloaded again)"
    where = (
        f"backbone {backbone!r}: ImageNet weights {ws.url} ({_expected(ws)}, "
        f"~{ws.download_mb:.0f} MB){stale}"
    )
    manual = f"Copy the published file by hand to {target} and build again."
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=folder)
    try:
        try:
            got = keras.utils.get_file(ws.file_name, ws.url, cache_subdir=tmp, cache_dir=folder)
        except Exception as e:  # urllib / Keras raise several types; one clear message
            raise PretrainedWeightsError(
                f"{where}: download failed ({type(e).__name__}: {e}). {manual}"
            ) from e
        ok, digest = _hash_matches(got, ws)
        if not ok:
            raise PretrainedWeightsError(
                f"{where}: the downloaded file's checksum is {digest}, expected "
                f"{_expected(ws)}; it was discarded. {manual}"
            )
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def converted_path(path: str) -> str:
    """Where the converted copy of a torchvision file is cached: beside it,
    ``<stem>.sketch_tf.npz``."""
    return os.path.splitext(path)[0] + ".sketch_tf.npz"


# ---- reading torch's zip format without torch ----------------------------------------------

#: Storage classes of a state dict -> numpy dtype (bfloat16 has no numpy dtype).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: type


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    """torch._utils._rebuild_tensor_v2 for a numpy storage: the strided view, copied."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[int(offset) :], tuple(size), tuple(int(s) * itemsize for s in stride)
    )
    return np.array(view)


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles torch's ``data.pkl`` allowing only what a state dict holds (no code runs)."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"{self._path}: {module}.{name} is not part of a plain state dict; not read "
            f"(load it with PyTorch if you trust it: {_TORCH_INSTALL_HINT})"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._path}: unknown persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._path}: unknown storage type {storage_type!r}")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict file (``torch.save`` of ``model.state_dict()``) as
    ``{key: numpy array}``.

    Files in torch's zip format (torch >= 1.6, every torchvision file named in
    `IMAGENET_WEIGHTS`) are read without PyTorch; a legacy-format file needs PyTorch.

    Raises:
      PretrainedWeightsError: a legacy file without PyTorch, a big-endian file, or content
        that is not a plain state dict.
    """
    if not zipfile.is_zipfile(path):
        try:
            import torch
        except ImportError as e:
            raise PretrainedWeightsError(
                f"{path} is in PyTorch's legacy (non-zip) format, which needs PyTorch to "
                f"read: {_TORCH_INSTALL_HINT}"
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.detach().cpu().numpy() for k, v in obj.items()}
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise PretrainedWeightsError(f"{path}: expected one */data.pkl in the zip")
        prefix = pickles[0][: -len("/data.pkl")]
        names = set(archive.namelist())
        if f"{prefix}/byteorder" in names and archive.read(f"{prefix}/byteorder") != b"little":
            raise PretrainedWeightsError(f"{path}: big-endian tensors are not supported")
        with archive.open(pickles[0]) as f:
            try:
                obj = _StateDictUnpickler(f, archive, prefix, path).load()
            except pickle.UnpicklingError as e:
                raise PretrainedWeightsError(str(e)) from e
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise PretrainedWeightsError(f"{path}: expected a state dict (name -> tensor)")
    return dict(obj)


def torch_layer_arrays(
    state: Mapping[str, np.ndarray], prefix: str = ""
) -> dict[str, list[np.ndarray]]:
    """A PyTorch state dict -> ``{keras layer name: weights in Keras order}`` of the
    torchvision layouts in `backbones` (module ``features.3`` -> layer ``features_3``,
    ``layer2.0.downsample.0`` -> ``layer2_0_downsample_0``).

    Convolutions (4-d ``weight``): kernel OIHW -> HWIO, then the bias if any. BatchNorm
    (``running_mean`` present): gamma, beta, moving mean, moving variance. Other modules
    (the classifier's Linear layers) and ``num_batches_tracked`` are left out: the
    backbones end before them.

    Args:
      state: key -> array (`read_torch_state_dict`).
      prefix: only keys starting with it are used, with it removed (e.g. "features.").
    """
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        module, _, param = key[len(prefix) :].rpartition(".")
        modules.setdefault(module, {})[param] = np.asarray(value)
    out = {}
    for module, params in modules.items():
        name = module.replace(".", "_")
        if "running_mean" in params:
            out[name] = [params[k].astype(np.float32) for k in
                         ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
        elif "weight" in params and params["weight"].ndim == 4:
            arrays = [np.transpose(params["weight"], (2, 3, 1, 0)).astype(np.float32)]
            if "bias" in params:
                arrays.append(params["bias"].astype(np.float32))
            out[name] = arrays
    return out


# ---- published file -> {layer name: arrays} -------------------------------------------------


def _keras_layer_arrays(backbone: str, path: str) -> dict[str, list[np.ndarray]]:
    """Loads a keras.applications file the way keras.applications does (`load_weights` of
    the reference model, order-based legacy h5) and returns its weights by layer name."""
    reference = _KERAS_REFERENCE[backbone]((64, 64, 3))  # conv weights: any input size
    try:
        reference.load_weights(path)
    except Exception as e:  # Keras raises several types for a file that does not fit
        raise PretrainedWeightsError(
            f"backbone {backbone!r}: {path} does not fit keras.applications' model: {e}"
        ) from e
    return {ly.name: [np.asarray(w) for w in ly.get_weights()] for ly in reference.layers
            if ly.weights}  # fmt: skip


def _read_converted(path: str) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    with np.load(path) as data:
        for key in sorted(data.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/")[-1]))):
            out.setdefault(key.rsplit("/", 1)[0], []).append(data[key])
    return out


def _write_converted(path: str, arrays: Mapping[str, list[np.ndarray]]) -> None:
    flat = {f"{name}/{i}": a for name, ws in arrays.items() for i, a in enumerate(ws)}
    with atomic_file(path, "wb") as f:
        np.savez(f, **flat)


@functools.lru_cache(maxsize=1)
def _cached_layer_arrays(backbone: str, cache_dir: str) -> dict:
    """`imagenet_layer_arrays` memoised per process (the last weight set only: vgg11's is
    0.5 GB): every tower of a model reads the file once."""
    ws = weight_set(backbone)
    if ws.source == "torchvision":
        folder = keras_cache_dir(cache_dir)
        converted = converted_path(os.path.join(folder, ws.file_name))
        if os.path.isfile(converted):
            arrays = _read_converted(converted)
        else:
            arrays = torch_layer_arrays(read_torch_state_dict(fetch_weights(backbone, cache_dir)))
            _write_converted(converted, arrays)
    else:
        arrays = _keras_layer_arrays(backbone, fetch_weights(backbone, cache_dir))
    for ws_ in arrays.values():
        for a in ws_:
            a.flags.writeable = False
    return arrays


def imagenet_layer_arrays(backbone: str, cache_dir: str | None = None) -> dict:
    """``{layer name: [arrays]}`` of `backbone`'s ImageNet weights (fetched, converted and
    cached on first use; read-only arrays shared within the process)."""
    return _cached_layer_arrays(backbone, _cache_root(cache_dir))


def _weighted_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _weighted_layers(layer)
        elif layer.weights:
            yield layer


def load_imagenet_weights(model: keras.Model, backbone: str, cache_dir: str | None = None) -> None:
    """Fills every layer of `model` (nested models included) that holds weights from
    `backbone`'s ImageNet weights, matched by layer name, checking counts and shapes.

    Layers of the weight set that `model` lacks (a classifier, blocks after a `cut`) are
    ignored; a layer of `model` that the weight set lacks is an error.

    Raises:
      PretrainedWeightsError: fetching failed, or the weights do not fit `model` (names
        and shapes listed).
    """
    arrays = imagenet_layer_arrays(backbone, cache_dir)
    problems, pairs = [], []
    for layer in _weighted_layers(model):
        src = arrays.get(layer.name)
        if src is None:
            problems.append(f"{layer.name}: not in the weight set")
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [a.shape for a in src]:
            problems.append(f"{layer.name}: model {shapes} vs file {[a.shape for a in src]}")
            continue
        pairs.append((layer, src))
    if problems:
        raise PretrainedWeightsError(
            f"backbone {backbone!r}: the ImageNet weights ({weight_set(backbone).file_name}) do "
            f"not fit model {model.name!r}: {problems[:8]}{'...' if len(problems) > 8 else ''}"
        )
    for layer, src in pairs:
        layer.set_weights(list(src))
