"""The one export path: versioned SavedModels in the layout TF Serving loads.

    <export_base>/<version>/saved_model.pb
                           /variables/...
                           /assets.extra/tf_serving_warmup_requests

The task supplies the signatures (`Task.serving_signatures`, one of them `serving_default`)
and example inputs (`Task.warmup_inputs`). The export is written to a temporary folder beside
the final one, reloaded and checked against the in-memory model on the warmup inputs, and only
then renamed into place, so TF Serving (which watches `<export_base>`) never sees a partial
version.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any

import numpy as np
import tensorflow as tf

from sketch_tf.export import warmup
from sketch_tf.train.tasks import unique_variables

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class _ServingModule(tf.Module):
    """Holds the models' variables so that the SavedModel saves them once."""

    def __init__(self, models: dict[str, Any]):
        super().__init__(name="sketch_tf_serving")
        self.model_variables = unique_variables(models)


def _to_numpy_dict(outputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in outputs.items()}


def export_saved_model(
    task,
    models: dict[str, Any],
    export_base: str,
    version: int,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
    atol: float = 1e-4,
) -> str:
    """Writes `<export_base>/<version>` atomically and returns its path.

    Args:
      task: the Task (gives signatures and warmup inputs).
      models: its built (and restored) models.
      export_base: the model's base folder, as TF Serving's `--model_base_path`.
      version: integer version folder name.
      model_name: model name written into the warmup requests (default: the task name).
      overwrite: replace an existing version folder instead of failing.
      atol: tolerance of the reload check (reloaded vs in-memory outputs).
    """
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    final = os.path.join(export_base, str(int(version)))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists (use another --version or --overwrite)")
    os.makedirs(export_base, exist_ok=True)
    tmp = os.path.join(export_base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    signatures = task.serving_signatures(models)
    if "serving_default" not in signatures:
        raise ValueError(
            f"task {task.name!r} gave no 'serving_default' signature: {sorted(signatures)}"
        )
    inputs = task.warmup_inputs()
    try:
        module = _ServingModule(models)
        tf.saved_model.save(module, tmp, signatures=signatures)
        if inputs:
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            warmup.write_warmup_requests(
                os.path.join(tmp, WARMUP_FILE), model_name or task.name, inputs
            )
        _check_reload(tmp, signatures, inputs, atol)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_reload(
    path: str, signatures: dict, inputs: dict[str, dict[str, Any]], atol: float
) -> None:
    """Reloads the SavedModel and compares every signature with the in-memory function."""
    loaded = tf.saved_model.load(path)
    missing = set(signatures) - set(loaded.signatures)
    if missing:
        raise RuntimeError(f"exported SavedModel at {path} lacks signatures {sorted(missing)}")
    for name, example in inputs.items():
        expected = _to_numpy_dict(
            signatures[name](**{k: tf.constant(v) for k, v in example.items()})
        )
        got = _to_numpy_dict(
            loaded.signatures[name](**{k: tf.constant(v) for k, v in example.items()})
        )
        for key, value in expected.items():
            if value.dtype.kind == "f":
                if not np.allclose(value, got[key], atol=atol, rtol=1e-4):
                    diff = float(np.max(np.abs(value - got[key])))
                    raise RuntimeError(
                        f"reloaded signature {name!r} output {key!r} differs from the in-memory "
                        f"model by {diff} (> {atol})"
                    )
            elif not np.array_equal(value, got[key]):
                raise RuntimeError(f"reloaded signature {name!r} output {key!r} differs")
