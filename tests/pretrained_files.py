"""Writers of the published weight-file formats for the offline tests of
`sketch_tf.models.pretrained` (test_pretrained.py), and a pre-filled Keras cache."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import h5py
import numpy as np
from keras.src.legacy.saving import legacy_h5_format

from sketch_tf.models import pretrained


def write_keras_h5(model, path) -> None:
    """`model`'s weights in the legacy Keras h5 layout of the keras.applications files
    (top-level ``layer_names``, one group per layer with its ``weight_names``), written by
    Keras' own legacy writer."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def file_digest(path, algorithm: str) -> str:
    h = hashlib.md5() if algorithm == "md5" else hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def install(monkeypatch, cache_root, backbone: str, source_path, **changes) -> str:
    """Puts `source_path` into the Keras cache under `cache_root` with the published file name
    of `backbone`, and patches the expected hash (and `changes`, e.g. url) of its weight set
    to that file's; returns the cached path. `KERAS_HOME` points at `cache_root`."""
    ws = pretrained.IMAGENET_WEIGHTS[backbone]
    folder = os.path.join(cache_root, "models")
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, ws.file_name)
    with open(source_path, "rb") as src, open(target, "wb") as dst:
        dst.write(src.read())
    patch_hash(monkeypatch, backbone, source_path, **changes)
    monkeypatch.setenv("KERAS_HOME", str(cache_root))
    return target


def patch_hash(monkeypatch, backbone: str, path, **changes) -> None:
    """Sets the expected hash of `backbone`'s weight set to that of the file at `path` (the
    whole md5, or the sha256 prefix of the same length), plus `changes`."""
    ws = pretrained.IMAGENET_WEIGHTS[backbone]
    if ws.hash_algorithm == "md5":
        digest = file_digest(path, "md5")
    else:
        digest = file_digest(path, "sha256")[: len(ws.file_hash)]
    new = dataclasses.replace(ws, file_hash=digest, **changes)
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, backbone, new)
    pretrained._cached_layer_arrays.cache_clear()


# ---- torch's zip format, written without torch ---------------------------------------------

_DTYPE_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


@contextlib.contextmanager
def _fake_torch_globals():
    """Modules ``torch`` / ``torch._utils`` holding the names torch's pickles refer to, so
    `pickle` can write references to them (only while torch itself is not importable)."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is written
        raise AssertionError("stand-in")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    for name in _DTYPE_STORAGE.values():
        setattr(torch_mod, name, type(name, (), {"__module__": "torch"}))
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})
    try:
        yield torch_mod, utils_mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Tensor:
    def __init__(self, key, array):
        self.key, self.array = key, array


def write_torch_zip(path, state: dict[str, np.ndarray], archive: str = "archive") -> None:
    """`state` (key -> float32 / int64 array) as ``torch.save`` writes a state dict since
    torch 1.6: a zip of ``<archive>/data.pkl`` (protocol 2; tensors as
    ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    OrderedDict())`` with storages as persistent ids ``("storage", torch.FloatStorage, key,
    "cpu", numel)``), ``<archive>/data/<key>`` (raw little-endian storages),
    ``<archive>/byteorder`` and ``<archive>/version``."""
    with _fake_torch_globals() as (torch_mod, utils_mod):
        tensors = OrderedDict(
            (k, _Tensor(str(i), np.ascontiguousarray(v))) for i, (k, v) in enumerate(state.items())
        )

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__storage__":
                    t = obj[1]
                    storage = getattr(torch_mod, _DTYPE_STORAGE[t.array.dtype])
                    return ("storage", storage, t.key, "cpu", t.array.size)
                return None

            def reducer_override(self, obj):
                if isinstance(obj, _Tensor):
                    a = obj.array
                    stride = tuple(s // a.itemsize for s in a.strides)
                    args = (("__storage__", obj), 0, a.shape, stride, False, OrderedDict())
                    return utils_mod._rebuild_tensor_v2, args
                return NotImplemented

        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(tensors)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for t in tensors.values():
            little = t.array.astype(t.array.dtype.newbyteorder("<"))
            z.writestr(f"{archive}/data/{t.key}", little.tobytes())
        z.writestr(f"{archive}/version", "3\n")


def torch_state_of(model, extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The PyTorch state dict of a torchvision-layout backbone (`backbones.build_alexnet`,
    vgg11, resnet18): layer ``layer1_0_conv1`` -> keys ``layer1.0.conv1.*``, conv kernels
    HWIO -> OIHW, BatchNorm with ``num_batches_tracked``; plus `extra` keys."""
    state: dict[str, np.ndarray] = OrderedDict()
    for layer in model.layers:
        if not layer.weights:
            continue
        module = layer.name.replace("_", ".")
        w = [np.asarray(v) for v in layer.get_weights()]
        if len(w) == 4:  # BatchNormalization: gamma, beta, moving mean, moving variance
            for key, a in zip(("weight", "bias", "running_mean", "running_var"), w, strict=True):
                state[f"{module}.{key}"] = a
            state[f"{module}.num_batches_tracked"] = np.array(7, np.int64)
        else:
            state[f"{module}.weight"] = np.ascontiguousarray(np.transpose(w[0], (3, 2, 0, 1)))
            if len(w) == 2:
                state[f"{module}.bias"] = w[1]
    state.update(extra or {})
    return state
