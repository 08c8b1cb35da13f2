"""Convert a PyTorch SketchZooms checkpoint into our Keras model (fusion='upstream').

The public SketchZooms code (Navarro et al. 2021) defines three networks whose state dicts
this tool reads (a ``module.`` prefix from DataParallel is stripped; a checkpoint dict with
``model_state_dict`` / ``state_dict`` is unwrapped):

- ``alexnet`` (`SketchNetwork`): ``features.{0,3,6,8,10}`` (torchvision AlexNet convs),
  ``classifier.1`` (fc 9216 -> 4096; ``classifier`` = torchvision classifier[:3] = dropout,
  fc, ReLU), ``dimreduction.0`` (fc 4096 -> 128). The unused ``class_binary.*`` is ignored.
- ``vgg11`` (`SketchNetworkVGG`): ``original_model.features.*``, ``classifier`` (= the
  torchvision classifier[0], fc 25088 -> 4096, no activation), ``dimreduction.0``; the rest
  of ``original_model.classifier`` is unused and ignored.
- ``resnet18`` (`SketchNetworkResnet`): ``original_model.{conv1,bn1,layerX.Y.*}`` (its ``fc``
  is an empty Sequential), ``dimreduction.0`` (fc 512 -> 128).

The views are fused with the public code's stride-3 max over the concatenated views, so the
Keras model is built with ``fusion="upstream"``. Layout changes: conv kernels OIHW -> HWIO,
dense kernels transposed, and the first fc after a flatten permuted from PyTorch's (C, H, W)
order to Keras' (H, W, C) order.

Command line::

    python -m sketch_tf.tools.convert_torch_sketchzooms --state_dict=ckpt.pkl --arch=alexnet \
        --out=sketchzooms_alexnet.keras

`--out` may end in ``.keras`` (whole model), ``.weights.h5`` or ``.npz`` (weights only; build
the model with `build_zooms_model(arch, fusion="upstream", head_hidden=...)` to load them).
Reading ``.pt`` / ``.pth`` / ``.pkl`` files needs PyTorch; an ``.npz`` of the state dict
(key -> array) does not.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping

import keras
import numpy as np

from sketch_tf.models.backbones import save_weights_npz
from sketch_tf.models.pretrained import torch_layer_arrays
from sketch_tf.models.zooms import build_zooms_model

ARCHS = ("alexnet", "vgg11", "resnet18")

#: Feature map (H, W, C) in front of the flatten of each backbone (after its adaptive pool).
_FLAT_SHAPE = {"alexnet": (6, 6, 256), "vgg11": (7, 7, 512)}

#: State-dict keys that the original models carry but never use for descriptors.
_IGNORED = {
    "alexnet": (r"^class_binary\.",),
    "vgg11": (r"^original_model\.classifier\.",),
    "resnet18": (r"^original_model\.fc\.",),
}


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state dict from ``.npz`` or a PyTorch file into ``{key: float32 array}``.

    A checkpoint dict holding ``model_state_dict`` or ``state_dict`` is unwrapped.
    """
    if path.endswith(".npz"):
        with np.load(path) as data:
            obj = {k: data[k] for k in data.files}
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {path!r} needs PyTorch (pip install torch, CPU build); or save the "
                "state dict as .npz (key -> array) first"
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r}: expected a state dict (mapping of name -> tensor)")
    return {k: _to_numpy(v) for k, v in obj.items()}


def _normalise_keys(state: Mapping[str, object], arch: str) -> dict[str, np.ndarray]:
    stripped = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if not key.endswith("num_batches_tracked"):
            stripped[key] = value
    if arch == "vgg11":
        # `classifier` is the same module as original_model.classifier[0]; accept either name.
        for suffix in ("weight", "bias"):
            alias = f"original_model.classifier.0.{suffix}"
            if f"classifier.{suffix}" not in stripped and alias in stripped:
                stripped[f"classifier.{suffix}"] = stripped[alias]
    return {
        key: _to_numpy(value).astype(np.float32)
        for key, value in stripped.items()
        if not any(re.match(p, key) for p in _IGNORED[arch])
    }


def _flat_dense_kernel(w: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """[out, C*H*W] (PyTorch flatten) -> [H*W*C, out] (Keras channels-last flatten)."""
    h, wd, c = hwc
    return np.transpose(w.reshape(w.shape[0], c, h, wd), (2, 3, 1, 0)).reshape(h * wd * c, -1)


def _backbone_assignments(state, arch):
    """Yields (keras layer name, [arrays in Keras weight order], torch key prefix): the
    torchvision trunk's convolutions and BatchNorms in the layout of `torch_layer_arrays`
    (the ImageNet conversion's), under the original models' module prefix."""
    prefix = "" if arch == "alexnet" else "original_model."
    for name, arrays in sorted(torch_layer_arrays(state, prefix).items()):
        yield name, arrays, prefix + name.replace("_", ".") + "."


def convert_state_dict(
    state_dict: Mapping[str, object], arch: str, view_size: int = 224
) -> keras.Model:
    """Builds our model for `arch` with fusion='upstream' and fills it from `state_dict`.

    Args:
      state_dict: PyTorch state dict of the original model (tensors or arrays).
      arch: "alexnet", "vgg11" or "resnet18".
      view_size: S of the views (224 in the original; alexnet's public code only runs at 224).

    Returns:
      keras.Model views [B, 3, S, S, 3] -> descriptors [B, 128] (not normalised), in which
      every variable was assigned from the state dict.

    Raises:
      ValueError: unknown arch, missing or unused keys, or shape mismatches (naming them).
    """
    if arch not in ARCHS:
        raise ValueError(f"convert: arch must be one of {ARCHS}, got {arch!r}")
    state = _normalise_keys(state_dict, arch)
    head_keys = {
        "alexnet": ("classifier.1.", "dimreduction.0."),
        "vgg11": ("classifier.", "dimreduction.0."),
        "resnet18": (None, "dimreduction.0."),
    }[arch]
    for prefix in head_keys:
        if prefix is not None and prefix + "weight" not in state:
            raise ValueError(f"convert ({arch}): state dict has no {prefix}weight")
    hidden = state[head_keys[0] + "weight"].shape[0] if head_keys[0] else None
    dim = state["dimreduction.0.weight"].shape[0]
    model = build_zooms_model(
        backbone=arch,
        view_size=view_size,
        descriptor_dim=dim,
        fusion="upstream",
        head="auto",
        head_hidden=hidden,
    )
    backbone = model.get_layer(arch)
    used: set[str] = set()
    assigned: set[int] = set()

    def assign(layer, arrays, torch_prefix):
        if len(layer.weights) != len(arrays):
            raise ValueError(
                f"convert ({arch}): {torch_prefix}* has {len(arrays)} tensors, "
                f"layer {layer.name} expects {len(layer.weights)}"
            )
        for var, arr in zip(layer.weights, arrays, strict=True):
            if tuple(var.shape) != tuple(arr.shape):
                raise ValueError(
                    f"convert ({arch}): {torch_prefix}* shape {arr.shape} does not fit "
                    f"{var.path} {tuple(var.shape)}"
                )
            var.assign(arr)
            assigned.add(id(var))
        used.update(k for k in state if k.startswith(torch_prefix))

    for name, arrays, prefix in _backbone_assignments(state, arch):
        try:
            layer = backbone.get_layer(name)
        except ValueError as e:
            raise ValueError(f"convert ({arch}): no Keras layer {name!r} for {prefix}*") from e
        assign(layer, arrays, prefix)
    if head_keys[0]:
        w = state[head_keys[0] + "weight"]
        kernel = _flat_dense_kernel(w, _FLAT_SHAPE[arch])
        assign(model.get_layer("head_hidden"), [kernel, state[head_keys[0] + "bias"]], head_keys[0])
    w = state["dimreduction.0.weight"]
    assign(model.get_layer("head_out"), [w.T, state["dimreduction.0.bias"]], "dimreduction.0.")

    unused = sorted(set(state) - used)
    missing = [v.path for v in model.weights if id(v) not in assigned]
    if unused or missing:
        raise ValueError(
            f"convert ({arch}): unused state-dict keys {unused[:10]}, "
            f"unassigned Keras variables {missing[:10]}"
        )
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state_dict", required=True, help=".pt/.pth/.pkl (torch) or .npz")
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--out", required=True, help=".keras, .weights.h5 or .npz")
    parser.add_argument("--view_size", type=int, default=224)
    args = parser.parse_args(argv)
    model = convert_state_dict(load_state_dict(args.state_dict), args.arch, args.view_size)
    if args.out.endswith(".keras"):
        model.save(args.out)
    elif args.out.endswith(".weights.h5"):
        model.save_weights(args.out)
    elif args.out.endswith(".npz"):
        save_weights_npz(model, args.out)
    else:
        parser.error(f"--out must end in .keras, .weights.h5 or .npz, got {args.out!r}")
    hidden = model.get_layer("head_hidden").units if args.arch != "resnet18" else None
    print(f"wrote {args.out} ({args.arch}, fusion=upstream, head_hidden={hidden})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
