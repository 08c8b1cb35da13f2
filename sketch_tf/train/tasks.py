"""The Task interface every model family implements, and the task registry.

A Task is the only thing a model family plugs into the project: the training loop
(`sketch_tf.train.loop`), the run helpers (`sketch_tf.train.run`), `evaluate.py`, `export.py`
and `main_job.py` talk to models exclusively through it and never name a family.

The family list *is* the registry: every package `sketch_tf/families/<name>/` is a family
whose `task.py` registers a Task under `<name>` (discovered on first use, so importing this
module stays cheap). Tests and users may register more tasks with `register_task`.

Contract for `compute_losses`: it runs inside `strategy.run` (one call per replica) and returns
a dict of scalar loss terms, each being *this replica's share of the global-batch mean*, so that
summing a term over replicas gives its value for the whole global batch. `LossContext` provides
the two ways of getting there: `ctx.mean(per_example)` for per-example losses, and
`ctx.all_gather` + `ctx.share(loss)` for losses that need the whole global batch (in-batch
triplet mining sees every replica's embeddings). The key `total` is what gets differentiated.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_collections
import tensorflow as tf

from sketch_tf.models.variables import unique_variables

#: name -> Task class. Filled by `register_task`; the families are imported on demand.
TASKS: dict[str, type[Task]] = {}

#: Package whose sub-packages are the model families (each with task.py, evaluate.py,
#: serving.py).
FAMILIES_PACKAGE = "sketch_tf.families"


def family_names() -> list[str]:
    """Names of the model families shipped with sketch_tf (sub-packages of
    `sketch_tf.families`), sorted. Cheap: nothing is imported."""
    package = importlib.import_module(FAMILIES_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.ispkg)


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a Task subclass to `TASKS` under `name`."""

    def add(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return add


def get_task_class(name: str) -> type[Task]:
    """Returns the Task class registered as `name`, importing its family package if needed."""
    if name not in TASKS and name in family_names():
        importlib.import_module(f"{FAMILIES_PACKAGE}.{name}.task")
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {known_task_names()}")
    return TASKS[name]


def known_task_names() -> list[str]:
    """Every task name: the shipped families and anything registered at run time."""
    return sorted(set(TASKS) | set(family_names()))


@dataclass(frozen=True)
class Headline:
    """One headline figure of a family for the main job's results table.

    Attributes:
      label: what is measured, e.g. "mAP@all, unseen classes".
      key: its key in `evaluate()["scalars"]`.
      baselines: (name, scalar key) of the non-learned baselines computed in the same run.
    """

    label: str
    key: str
    baselines: tuple[tuple[str, str], ...] = ()


@dataclass
class LossContext:
    """What `Task.compute_losses` needs to know about the distributed step.

    Attributes:
      global_batch_size: examples in one step over all replicas.
      num_replicas: replicas in sync.
    """

    global_batch_size: int
    num_replicas: int

    def mean(self, per_example: tf.Tensor) -> tf.Tensor:
        """This replica's share of the global-batch mean of a per-example loss `[b]` -> scalar."""
        per_example = tf.cast(per_example, tf.float32)
        return tf.reduce_sum(per_example) / float(self.global_batch_size)

    def all_gather(self, value: tf.Tensor) -> tf.Tensor:
        """Concatenates `value` `[b, ...]` over replicas along axis 0 -> `[global_b, ...]`.

        Every replica must pass the same `b` (datasets are batched with drop_remainder).
        Differentiable: gradients flow back to the replica that produced each row.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or self.num_replicas == 1:
            return value
        # Built from an all-reduce rather than `ctx.all_gather`, which fails under
        # MultiWorkerMirroredStrategy in TF 2.21 ("destinations can not be empty"): each
        # replica writes its rows into its own slot of a zero tensor and the SUM is the
        # concatenation. The gradient of a SUM all-reduce is the summed upstream gradient, so
        # each replica receives the gradient of its own rows, exactly as for an all-gather.
        dtype = value.dtype
        work = value if dtype.is_floating else tf.cast(value, tf.float64)
        slot = tf.one_hot(ctx.replica_id_in_sync_group, self.num_replicas, dtype=work.dtype)
        slot = tf.reshape(slot, [self.num_replicas] + [1] * len(work.shape))
        stacked = ctx.all_reduce(tf.distribute.ReduceOp.SUM, slot * work[None])
        gathered = tf.reshape(stacked, tf.concat([[-1], tf.shape(work)[1:]], 0))
        return gathered if dtype.is_floating else tf.cast(tf.round(gathered), dtype)

    def share(self, global_loss: tf.Tensor) -> tf.Tensor:
        """This replica's share of a loss already computed over the gathered global batch."""
        return tf.cast(global_loss, tf.float32) / float(self.num_replicas)


class Task:
    """Base class of a model family. Subclasses override the methods marked as required.

    The config is the whole `ml_collections.ConfigDict`; the task reads `config.data`,
    `config.model`, `config.eval` and whatever else its family defines. The loop and the run
    helpers read the config from the task (`task.config`), never beside it.
    """

    name: str = "task"
    #: Figures the main job prints for this family, next to their baselines.
    headlines: tuple[Headline, ...] = ()

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> list[str]:
        """Problems in the task-specific parts of `config` (empty when valid). Must be cheap."""
        return []

    # ---- model ---------------------------------------------------------------------------
    def build_models(self) -> dict[str, Any]:
        """Required. Builds the Keras models (called under `strategy.scope()`).

        Returns a dict name -> keras.Model; every variable in them is checkpointed.
        """
        raise NotImplementedError

    def trainable_models(self, models: dict[str, Any]) -> dict[str, Any]:
        """The models the optimizer updates: those named in `config.train.trainable`, or all
        when it is empty. The loop freezes the others (`model.trainable = False`, so their
        BatchNorm statistics stay fixed too)."""
        names = tuple(self.config.train.get("trainable", ()) or ())
        return {k: v for k, v in models.items() if not names or k in names}

    def trainable_variables(self, models: dict[str, Any]) -> list[tf.Variable]:
        """Variables the optimizer updates (default: the trainable weights of
        `trainable_models`)."""
        return unique_variables(self.trainable_models(models), "trainable_variables")

    # ---- data ----------------------------------------------------------------------------
    def train_test_records(self, which: str, prepare_command: Callable[[str], str]) -> str:
        """The record folder `<data.root>/<data.train_split>` (`which="train"`) or
        `<data.root>/<data.test_split>` (`"test"`), checked to hold a manifest; the error
        names the folder and `prepare_command(split)`, the command that writes it."""
        from sketch_tf.data import tfrecord

        d = self.config.data
        split = d.train_split if which == "train" else d.test_split
        return tfrecord.records_dir(
            d.root, split, f"{self.name}: no {which} records", prepare_command(split)
        )

    def build_train_dataset(
        self, global_batch_size: int, seed: int, models: dict[str, Any] | None = None
    ) -> tf.data.Dataset:
        """Required. An infinite dataset of global batches (dicts of tensors) in a fixed order
        for a given seed; a resume restores its iterator from the checkpoint, or skips the
        batches already consumed (`loop._input_iterator`). Its ops must be checkpointable as
        a `tf.data` iterator (no `py_function` / `from_generator`).

        `models`: the built models with their restored / initialised weights, for tasks whose
        input depends on them (batches of cached trunk features, `sketch_tf.data.cache`);
        the loop always passes them."""
        raise NotImplementedError

    def train_input_shards(self) -> int | None:
        """Shards of the training records when `build_train_dataset` reads them as one plain
        stream that workers may split by file (then it must accept `input_context`, a
        `tf.distribute.InputContext`, and read only that worker's shards); None (the
        default) when the input draws from every class or domain on each worker
        (class-balanced samplers, in-memory indexes), which only sharding by data keeps
        intact (`loop.choose_input_sharding`)."""
        return None

    def precompute(
        self, models: dict[str, Any], log: Callable[[str], None] = print
    ) -> dict[str, str]:
        """Computes (or checks) the task's cached derived data for training and evaluation,
        as the first training run would (`prepare_data.py --derived`). Returns {what: cache
        folder}; the default task has nothing to cache."""
        return {}

    # ---- training ------------------------------------------------------------------------
    def compute_losses(
        self, models: dict[str, Any], batch: dict[str, tf.Tensor], ctx: LossContext
    ) -> dict[str, tf.Tensor]:
        """Required. Loss terms for one replica's batch, incl. `total` (see module docstring)."""
        raise NotImplementedError

    def schedule_values(self, models: dict[str, Any], step: int) -> dict[str, float]:
        """Called on the host before each step; applies step/epoch schedules (e.g. the GRL
        lambda) to the models and returns the values to log (name -> float)."""
        return {}

    # ---- the family's other two files ----------------------------------------------------
    def family_module(self, module: str):
        """`sketch_tf.families.<name>.<module>` ("evaluate" / "serving") when this task is a
        shipped family, else None (tasks registered at run time)."""
        if self.name not in family_names():
            return None
        return importlib.import_module(f"{FAMILIES_PACKAGE}.{self.name}.{module}")

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, models: dict[str, Any], workdir: str | None = None) -> dict[str, Any]:
        """Metrics on held-out data. Returns a dict with `scalars` (name -> float), and
        optionally `images` (name -> uint8 [N, H, W, 3]) and `tables` (name -> rows).
        Files (pictures) go under `<workdir>/eval` only when `workdir` is given: the loop
        passes it on the chief only.

        Default: the family's `evaluate.evaluate_task(task, models, workdir)`; no metric for
        a task outside the families."""
        module = self.family_module("evaluate")
        if module is None:
            return {"scalars": {}}
        return module.evaluate_task(self, models, workdir)

    # ---- export --------------------------------------------------------------------------
    def serving_signatures(
        self, models: dict[str, Any], gallery=None
    ) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """Serving signatures for `export.py` (name -> concrete function); one must be
        `serving_default`. `gallery`: a `sketch_tf.export.gallery.ServingGallery` of
        `serving_gallery`, searched by the retrieval signatures. Default: the family's
        `serving.serving_signatures(task, models, gallery)`."""
        module = self.family_module("serving")
        if module is None:
            raise NotImplementedError(f"task {self.name!r} defines no serving signatures")
        return module.serving_signatures(self, models, gallery)

    def serving_gallery(self, models: dict[str, Any], records_dir: str, manifest: dict):
        """The retrieval gallery embedded from a labelled-image records folder
        (`export.py --gallery`), or None when the task serves no retrieval. `manifest` (the
        model that embeds it) is stored with it. Default: `export.gallery.serving_gallery`
        when the family's serving module defines the gallery (`gallery_domains`,
        `gallery_embed`, `index_vectors`)."""
        from sketch_tf.export import gallery  # noqa: PLC0415 - export code only when exporting

        if gallery.retrieval_module(self) is None:
            return None
        return gallery.serving_gallery(self, models, records_dir, manifest)

    def warmup_inputs(self, signatures=None) -> dict[str, dict[str, Any]]:
        """signature name -> example inputs (name -> numpy array / bytes) for the TF Serving
        warmup file and the export round-trip check (the export keeps those of the
        `signatures` it writes). Default: the family's `serving.warmup_inputs(task,
        signatures)` ({} outside the families)."""
        module = self.family_module("serving")
        return {} if module is None else module.warmup_inputs(self, signatures)
