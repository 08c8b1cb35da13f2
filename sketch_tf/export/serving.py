"""The one export path: versioned SavedModels in the layout TF Serving loads.

    <export_base>/<version>/saved_model.pb
                           /variables/...
                           /assets.extra/tf_serving_warmup_requests
    <export_base>/models.config             (`--model_config_file` of tensorflow_model_server)
    <export_base>/batching_parameters.txt   (`--batching_parameters_file`)

The task's `Serving` (`Task.serving()`) supplies the signatures (one of them
`serving_default`) and example inputs (one request per signature). The export is written
to a temporary folder beside the final one, reloaded with both loaders (`tf.saved_model.load`
and the TF1 session loader TF Serving uses) and checked against the in-memory model on the
warmup requests as parsed back from the warmup file, and only then renamed into place, so
TF Serving (which watches `<export_base>`) never sees a partial version: a process killed
midway leaves only a hidden `.tmp-<version>-<pid>-...` folder, which the server ignores (it
loads integer folder names) and the next export removes. Replacing a version (`overwrite`)
moves the old folder aside before the rename and deletes it after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from sketch_tf.core.files import write_atomic
from sketch_tf.export import gallery as gallery_lib
from sketch_tf.export import warmup
from sketch_tf.models.variables import unique_variables

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODEL_MANIFEST_FILE = os.path.join("assets.extra", "model.json")
MODELS_CONFIG_FILE = "models.config"
BATCHING_FILE = "batching_parameters.txt"
#: Server-side batching for a 2-core CPU host: batches of up to 32 requests, waiting at most
#: 2 ms for a batch to fill (`BatchingParameters` of tensorflow_serving, text format).
BATCHING_PARAMETERS = {
    "max_batch_size": 32,
    "batch_timeout_micros": 2000,
    "num_batch_threads": 2,
    "max_enqueued_batches": 64,
}
_TMP_RE = re.compile(r"^\.(tmp|old)-\d+-(\d+)-[0-9a-f]+$")


def next_version(export_base: str) -> int:
    """1 + the largest integer version folder in `export_base` (1 when there is none)."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(n) for n in os.listdir(export_base) if n.isdigit()]
    return max(versions, default=0) + 1


def server_config_text(model_name: str, base_path: str) -> str:
    """`models.config` for `tensorflow_model_server --model_config_file`: one model, the
    newest version served (ModelServerConfig text proto)."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy { latest { num_versions: 1 } }\n"
        "  }\n"
        "}\n"
    )


def batching_parameters_text(params: dict[str, int] | None = None) -> str:
    """`batching_parameters.txt` for `--enable_batching --batching_parameters_file`."""
    params = {**BATCHING_PARAMETERS, **(params or {})}
    return "".join(f"{key} {{ value: {int(value)} }}\n" for key, value in params.items())


def _remove_stale_temporaries(export_base: str) -> list[str]:
    """Cleans up after export processes that are no longer alive: deletes their `.tmp-*`
    folders, and puts an `.old-<version>-*` folder (a replaced version whose replacement was
    killed before its rename) back as `<version>` when that is missing, else deletes it."""
    removed = []
    for name in os.listdir(export_base):
        match = _TMP_RE.match(name)
        if not match:
            continue
        pid = int(match.group(2))
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if alive:
            continue
        path = os.path.join(export_base, name)
        version = name.split("-")[1]
        if match.group(1) == "old" and not os.path.exists(os.path.join(export_base, version)):
            os.rename(path, os.path.join(export_base, version))
        else:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


class _ServingModule(tf.Module):
    """Holds the models' variables so that the SavedModel saves them once.

    It tracks the `tf.Variable` inside each Keras 3 variable, not the Keras wrapper: with the
    wrappers the SavedModel restores under TF2's loader, but the TF1 session loader (how TF
    Serving runs a SavedModel) finds none of them initialised ("Could not find variable
    head_out/kernel"), for every family; `_check_reload` runs both loaders on every export.
    """

    def __init__(self, models: dict[str, Any]):
        super().__init__(name="sketch_tf_serving")
        self.model_variables = [
            v.value if isinstance(v, keras.Variable) else v for v in unique_variables(models)
        ]


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
    atol: float = 1e-5,
    server_base_path: str | None = None,
    gallery=None,
    model_manifest: dict | None = None,
) -> str:
    """Writes `<export_base>/<version>` atomically and returns its path; also (re)writes
    `models.config` and `batching_parameters.txt` in `export_base`.

    Args:
      task: the Task (its `serving()` gives signatures and warmup inputs).
      models: its built (and restored) models.
      export_base: the model's base folder, as TF Serving's `--model_base_path`.
      version: integer version folder name.
      model_name: model name written into the warmup requests (default: the task name).
      overwrite: replace an existing version folder instead of failing.
      atol: absolute tolerance of the reload check (reloaded vs in-memory outputs, both
        loaders; relative tolerance 1e-5).
      server_base_path: the model's base path as the server sees it, written into
        `models.config` (default `/models/<model_name>`, the TF Serving Docker image's
        layout when `export_base` is mounted there).
      gallery: a `sketch_tf.export.gallery.ServingGallery` (`run_gallery`) stored in
        the servable and searched by the retrieval signatures; its manifest is written as
        `assets.extra/gallery.json`.
      model_manifest: what identifies the model (`Run.manifest()`), written as
        `assets.extra/model.json` (`retrieve.py` checks a saved index against it).

    Raises:
      ValueError: no `serving_default`, or a signature without a warmup request.
      RuntimeError: a reloaded signature differs from the in-memory one.
    """
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    final = os.path.join(export_base, str(int(version)))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists (use another --version or --overwrite)")
    os.makedirs(export_base, exist_ok=True)
    _remove_stale_temporaries(export_base)
    tag = f"{int(version)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(export_base, f".tmp-{tag}")
    name = model_name or task.name
    serving = task.serving()
    signatures = serving.signatures(models, gallery=gallery)
    if "serving_default" not in signatures:
        raise ValueError(
            f"task {task.name!r} gave no 'serving_default' signature: {sorted(signatures)}"
        )
    inputs = {k: v for k, v in serving.warmup_inputs(signatures).items() if k in signatures}
    if inputs and set(inputs) != set(signatures):
        raise ValueError(
            f"task {task.name!r}: no warmup request for signatures "
            f"{sorted(set(signatures) - set(inputs))}"
        )
    try:
        module = _ServingModule(models)
        if gallery is not None:
            module.gallery = gallery  # its variables are saved with the model's
        tf.saved_model.save(module, tmp, signatures=signatures)
        if gallery is not None:
            gallery.write_manifest(tmp)
        if model_manifest is not None:
            write_atomic(os.path.join(tmp, MODEL_MANIFEST_FILE), json.dumps(model_manifest))
        if inputs:
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            warmup.write_warmup_requests(os.path.join(tmp, WARMUP_FILE), name, inputs)
            # The check replays the requests as parsed back from the file the server reads.
            inputs = {
                r["signature"]: r["inputs"]
                for r in warmup.read_warmup_requests(os.path.join(tmp, WARMUP_FILE))
            }
        _check_reload(tmp, signatures, inputs, atol)
        old = os.path.join(export_base, f".old-{tag}")
        if os.path.exists(final):
            os.rename(final, old)  # the server never sees a half-deleted version
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    write_atomic(
        os.path.join(export_base, MODELS_CONFIG_FILE),
        server_config_text(name, server_base_path or f"/models/{name}"),
    )
    write_atomic(os.path.join(export_base, BATCHING_FILE), batching_parameters_text())
    return final


def run_gallery(run, gallery: str | None = "test"):
    """The serving gallery of a loaded run (`sketch_tf.train.run.Run`) for `export_run`.

    Args:
      gallery: a labelled-image records folder (every record of the task's gallery
        domains), "test" (the task's `Retrieval.gallery_records()`, its test records, of its
        `gallery_classes()`: the classes the run was restricted to and evaluated on) or None
        / "none" (no gallery).

    Returns:
      a `ServingGallery` carrying `run.manifest()`, or None (no gallery asked for, or the task
      serves no retrieval and `gallery` is "test").

    Raises:
      ValueError: `gallery` is not a folder, its records are not labelled images of the
        task's gallery domains, or a named folder was given to a task without retrieval.
    """
    if gallery in (None, "none"):
        return None
    if gallery != "test" and not os.path.isdir(gallery):
        raise ValueError(f"gallery {gallery}: not a folder (a records folder, 'test' or 'none')")
    retrieval = run.task.retrieval()
    if retrieval is None:
        if gallery == "test":
            return None
        raise ValueError(f"gallery {gallery}: task {run.task.name!r} serves no retrieval")
    if gallery == "test":
        records, classes = retrieval.gallery_records(), retrieval.gallery_classes()
    else:
        records, classes = gallery, None  # the user's folder is the user's gallery
    return gallery_lib.serving_gallery(run.task, run.models, records, run.manifest(), classes)


def export_run(run, export_base: str, version: int | None = None, gallery="test", **kwargs):
    """`export_saved_model` of a loaded run, with its gallery (`run_gallery`); `version`
    None = `next_version(export_base)`. Returns the version folder."""
    built = run_gallery(run, gallery)
    if version is None:
        version = next_version(export_base)
    return export_saved_model(
        run.task,
        run.models,
        export_base,
        version,
        gallery=built,
        model_manifest=run.manifest(),
        **kwargs,
    )


def session_outputs(path: str, requests: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """Runs signatures of a SavedModel the way TF Serving executes them: loaded once with the
    TF1 session loader (tag "serve"), fed and fetched by the SignatureDefs' tensor names.

    The requests run in one `Session.run` (each signature reads its own placeholders and
    writes its own outputs, so the values are those of one run per signature): the graph is
    pruned and optimised once instead of once per signature, which is most of the cost of a
    first call (an export of 12 signatures: 4.8 s instead of 7.8 s).

    Args:
      path: a SavedModel folder; requests: {signature key: {input key: array}}.

    Returns:
      {signature key: {output key: numpy array}}.

    Raises:
      KeyError: a signature, or an input of one, that the SavedModel does not have.
    """
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        feeds, fetches = {}, {}
        for name, values in requests.items():
            if name not in meta.signature_def:
                raise KeyError(f"{path}: no signature {name!r} in {sorted(meta.signature_def)}")
            sig = meta.signature_def[name]
            unknown = set(values) - set(sig.inputs)
            if unknown:
                raise KeyError(
                    f"{path} signature {name!r}: no inputs {sorted(unknown)} in "
                    f"{sorted(sig.inputs)}"
                )
            feeds[name] = {sig.inputs[k].name: np.asarray(v) for k, v in values.items()}
            fetches[name] = {k: t.name for k, t in sig.outputs.items()}
        placeholders = [t for f in feeds.values() for t in f]
        if len(placeholders) != len(set(placeholders)):  # signatures sharing one: run apart
            return {name: session.run(fetches[name], feeds[name]) for name in requests}
        return session.run(fetches, {t: v for f in feeds.values() for t, v in f.items()})


def _check_reload(
    path: str, signatures: dict, inputs: dict[str, dict[str, Any]], atol: float
) -> None:
    """Reloads the SavedModel and compares every signature with warmup inputs with the
    in-memory function, through `tf.saved_model.load` and through the TF1 session loader
    (`session_outputs`, the server's path)."""
    loaded = tf.saved_model.load(path)
    missing = set(signatures) - set(loaded.signatures)
    if missing:
        raise RuntimeError(f"exported SavedModel at {path} lacks signatures {sorted(missing)}")
    via_session = session_outputs(path, inputs)
    for name, example in inputs.items():
        expected = _to_numpy_dict(
            signatures[name](**{k: tf.constant(v) for k, v in example.items()})
        )
        got = _to_numpy_dict(
            loaded.signatures[name](**{k: tf.constant(v) for k, v in example.items()})
        )
        _compare(name, "tf.saved_model.load", expected, got, atol)
        _compare(name, "the TF1 session loader", expected, via_session[name], atol)


def _compare(name: str, how: str, expected: dict, got: dict, atol: float) -> None:
    """Raises RuntimeError naming the signature, loader and output that differ."""
    for key, value in expected.items():
        if key not in got:
            raise RuntimeError(f"signature {name!r} reloaded with {how} has no output {key!r}")
        other = np.asarray(got[key])
        if value.dtype.kind == "f":
            if value.shape != other.shape or not np.allclose(value, other, atol=atol, rtol=1e-5):
                diff = float(np.max(np.abs(value - other))) if value.shape == other.shape else None
                raise RuntimeError(
                    f"signature {name!r} reloaded with {how}: output {key!r} differs from the "
                    f"in-memory model by {diff} (> {atol}; shapes {value.shape}, {other.shape})"
                )
        elif not np.array_equal(value, other):
            raise RuntimeError(f"signature {name!r} reloaded with {how}: output {key!r} differs")
