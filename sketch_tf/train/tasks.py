"""The Task interface every model family implements, and tasks registered at run time.

A Task is the only thing a model family plugs into the project: the training loop
(`sketch_tf.train.loop`), the run helpers (`sketch_tf.train.run`), `evaluate.py`, `export.py`
and `main_job.py` talk to models exclusively through it and never name a family.

The Task builds models, inputs and losses itself. For the rest it returns explicit objects,
typed by the protocols below: `Task.evaluators()` (each an `Evaluator`, `Task.evaluate` runs
them and merges their results), `Task.serving()` (a `Serving`: SavedModel signatures and their
warmup inputs) and `Task.retrieval()` (a `Retrieval` for the families that search a gallery,
else None).

The shipped families are listed in `sketch_tf.families` (`get_task_class`, `family_names`);
tests and users may register more tasks with `register_task` (`TASKS`).

Contract for `compute_losses`: it runs inside `strategy.run` (one call per replica) and returns
a dict of scalar loss terms, each being *this replica's share of the global-batch mean*, so that
summing a term over replicas gives its value for the whole global batch. `LossContext` provides
the two ways of getting there: `ctx.mean(per_example)` for per-example losses, and
`ctx.all_gather` + `ctx.share(loss)` for losses that need the whole global batch (in-batch
triplet mining sees every replica's embeddings). The key `total` is what gets differentiated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import ml_collections
import numpy as np
import tensorflow as tf

from sketch_tf.models.variables import unique_variables

#: name -> Task class of the tasks registered at run time (`register_task`: tests, users).
#: The shipped families are listed in `sketch_tf.families.FAMILIES`.
TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a Task subclass to `TASKS` under `name` (sets `cls.name`)."""

    def add(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return add


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


def headlines_with_baselines(
    figures: tuple[tuple[str, str], ...], baselines: tuple[tuple[str, str], ...]
) -> tuple[Headline, ...]:
    """One `Headline(label, key, ...)` per (label, key) of `figures`, each with the same
    non-learned `baselines`: (name, scalar key pattern), the pattern's `{key}` filled with the
    figure's key (e.g. ("HOG", "hog/{key}"))."""
    return tuple(
        Headline(label, key, tuple((name, pattern.format(key=key)) for name, pattern in baselines))
        for label, key in figures
    )


def synthetic_prepare_command(config: ml_collections.ConfigDict, task: str) -> str:
    """The `prepare_data.py` command that writes the records of a synthetic variant: its
    `data.synthetic` section (image_size, n_per_category, test_fraction) for `--task=task`
    into `data.root`."""
    s = config.data.synthetic
    return (
        f"python prepare_data.py --source=synthetic --task={task} --image_size="
        f"{s.image_size} --n_per_category={s.n_per_category} --test_fraction="
        f"{s.test_fraction} --out={config.data.root}"
    )


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


class Evaluator(Protocol):
    """One evaluation of a Task on held-out data (big_vision's evaluators are the model).

    Attributes:
      name: what it evaluates, e.g. "<family>/retrieval"; named in errors.
    """

    name: str

    def run(self, models: dict[str, Any], workdir: str | None = None) -> dict[str, Any]:
        """Evaluates `models` (the Task's built models, name -> keras.Model).

        Returns {"scalars": {name: float}} and optionally "images" (name -> uint8 [N, H, W, 3]),
        "tables" (name -> {"header", "rows"}), "files" (name -> path) and other JSON-able
        entries. Files go under `<workdir>/eval` only when `workdir` is given (the loop passes
        it on the chief only).
        """
        ...


class Serving(Protocol):
    """What `sketch_tf.export` needs to write a Task's SavedModel."""

    def signatures(
        self, models: dict[str, Any], gallery=None
    ) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """Signature name -> concrete function over `models` (the whole dict); one must be
        `serving_default`. `gallery`: a `sketch_tf.export.gallery.ServingGallery` searched by
        the retrieval signatures (None: no retrieval signature)."""
        ...

    def warmup_inputs(self, signatures=None) -> dict[str, dict[str, Any]]:
        """Signature name -> example inputs (name -> numpy array / bytes) for the TF Serving
        warmup file and the export's reload check; `signatures` (those being written) lets
        the inputs match their shapes. The export keeps those of the signatures it writes."""
        ...


class Retrieval(Protocol):
    """How a Task retrieves gallery images for sketch queries (`Task.retrieval()`): how its
    gallery is embedded and indexed and how a query becomes index rows. Used by
    `sketch_tf.export.gallery` (the gallery stored in an export) and `sketch_tf.search`."""

    def gallery_records(self) -> str:
        """The records folder an export's gallery holds unless told otherwise
        (`export.py --gallery=test`): the task's test records."""
        ...

    def gallery_classes(self) -> tuple[str, ...] | None:
        """The class names the default gallery (`gallery_records`, `export.py
        --gallery=test`) holds: those the run was restricted to (`data.classes`), or None =
        every class of the records. A folder the user names keeps every class."""
        ...

    def gallery_domains(self) -> list[str]:
        """The record domains a gallery holds (e.g. the photos)."""
        ...

    def gallery_embed(
        self, models: dict[str, Any], records_dir: str, classes: Sequence[str] | None = None
    ) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
        """The embedder of the gallery images of the labelled-image folder `records_dir` (of
        `classes` only, names; None: every class): a batch {"image": preprocessed images
        float32 [B, S, S, 3], "image_key": their cache keys int64 [B]
        (`sketch_tf.data.cache.image_keys` of the encoded images)} -> {space: embeddings
        [B, E]}. A task with `uses_feature_cache()` runs only its towers' heads on the cached
        trunk features of the folder's `gallery_domains` images of `classes` (the cache of
        that folder, computed on first use); others run the full towers."""
        ...

    def index_vectors(self, embeddings: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
        """Gallery embeddings {space: [N, E_space]} -> (rows of a `GalleryIndex` float32
        [N, D], its metric)."""
        ...

    def query_vectors(
        self, models: dict[str, Any], sketches, exemplars=None, alpha: float | None = None
    ) -> np.ndarray:
        """Preprocessed sketches float32 [Q, S, S, 3] (and, for style retrieval, exemplars
        [Q, S, S, 3] and alpha in [0, 1]) -> index query rows float32 [Q, D] in the space of
        `index_vectors`. ValueError when `exemplars` / `alpha` are given where they do not
        belong, or missing where they do."""
        ...


def merge_results(results: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One evaluation result out of several evaluators' (name, result) in order.

    Dict entries ("scalars", "images", "tables", "files", ...) are merged key by key, other
    entries taken as they are. Returns at least {"scalars": {}}.

    Raises:
      ValueError: two evaluators give the same key (naming both).
    """
    merged: dict[str, Any] = {"scalars": {}}
    given_by: dict[tuple[str, str], str] = {}
    for name, result in results:
        for entry, value in result.items():
            keys = list(value) if isinstance(value, dict) else [""]
            for key in keys:
                if (entry, key) in given_by:
                    raise ValueError(
                        f"evaluators {given_by[entry, key]!r} and {name!r} both give "
                        f"{entry} {key!r}"
                    )
                given_by[entry, key] = name
            if isinstance(value, dict):
                merged.setdefault(entry, {}).update(value)
            else:
                merged[entry] = value
    return merged


class Task:
    """Base class of a model family. Subclasses override the methods marked as required.

    The config is the whole `ml_collections.ConfigDict`; the task reads `config.data`,
    `config.model`, `config.eval` and whatever else its family defines. The loop and the run
    helpers read the config from the task (`task.config`), never beside it.
    """

    name: str = "task"
    #: Figures the main job prints for this family, next to their baselines.
    headlines: tuple[Headline, ...] = ()
    #: CPU seconds of this family's share of the main job (`configs/<family>.py:synthetic`:
    #: render, train, evaluate, export), as measured; only an ordering hint: the main job starts the
    #: costliest families first (longest-processing-time order), so that the family processes
    #: running side by side end close together instead of one finishing alone on an idle CPU.
    main_job_cpu_s: float = 0.0
    #: What `evaluators()`, `serving()` and `retrieval()` build (each called with the task):
    #: a family's classes from its evaluate.py and serving.py.
    evaluator_types: tuple[Callable[[Task], Evaluator], ...] = ()
    serving_type: Callable[[Task], Serving] | None = None
    retrieval_type: Callable[[Task], Retrieval] | None = None
    #: The family's `sketch_tf/families/<family>/config.py`: `defaults()` beside `validate()`,
    #: and what `sketch_tf.train.config.migrate` needs; None for a task registered at run time.
    config_module: ModuleType | None = None

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> list[str]:
        """Problems in the task-specific parts of `config` (empty when valid). Must be cheap.
        Default: the family config module's `validate(config)` (none without one)."""
        return [] if cls.config_module is None else cls.config_module.validate(config)

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

    # ---- evaluation ----------------------------------------------------------------------
    def evaluators(self) -> list[Evaluator]:
        """The evaluations `evaluate` runs, in order: `evaluator_types`, each built with the
        task (none by default)."""
        return [make(self) for make in self.evaluator_types]

    def evaluate(self, models: dict[str, Any], workdir: str | None = None) -> dict[str, Any]:
        """Metrics on held-out data: every evaluator of `evaluators()` run on `models` and
        their results merged (`merge_results`): `scalars` (name -> float), and optionally
        `images` (name -> uint8 [N, H, W, 3]), `tables` (name -> rows), `files`. Files
        (pictures) go under `<workdir>/eval` only when `workdir` is given: the loop passes it
        on the chief only. No evaluator: {"scalars": {}}."""
        return merge_results([(e.name, e.run(models, workdir)) for e in self.evaluators()])

    # ---- export --------------------------------------------------------------------------
    def serving(self) -> Serving:
        """The SavedModel signatures and warmup inputs of `export.py`: `serving_type` built
        with the task. NotImplementedError when the task has none."""
        if self.serving_type is None:
            raise NotImplementedError(f"task {self.name!r} defines no serving signatures")
        return self.serving_type(self)

    def retrieval(self) -> Retrieval | None:
        """How the task retrieves gallery images (`export.py --gallery`, `retrieve.py`):
        `retrieval_type` built with the task, or None (the default) when it serves no
        retrieval."""
        return None if self.retrieval_type is None else self.retrieval_type(self)
