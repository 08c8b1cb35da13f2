"""The one training loop every model family uses.

`train()` runs `strategy.run` over `strategy.experimental_distribute_dataset` with a custom
step (Keras 3 `fit` does not work under MultiWorkerMirroredStrategy, keras-team/keras#20585),
so the same code serves the default strategy, MirroredStrategy (GPUs or logical CPUs) and
MultiWorkerMirroredStrategy.

Per step: the Task computes its loss terms per replica as shares of the global-batch mean
(see `sketch_tf.train.tasks`), gradients are summed across replicas by the optimizer, and the
terms are summed across replicas for logging. BatchNormalization is synchronised across
replicas (`train.sync_batch_norm`), so a distributed step gives the losses and updates of one
replica on the same global batch (to float32 rounding; tests/distributed.py). Workers split
the input by file or by data (`choose_input_sharding`, logged). Checkpoints (models,
optimizer state incl. its step counter and hence learning-rate schedules, and the global
step) go to `<workdir>/ckpt` through `tf.train.CheckpointManager`; a rerun with the same
workdir resumes from the latest one and from the input position saved with it
(`_input_iterator`; input sharded by file replays the consumed batches instead), so an
interrupted run continues exactly where an uninterrupted one would be (same seed,
deterministic ops). SIGTERM / SIGINT save a checkpoint and return a result with status
`interrupted` and the signal (`TrainResult.stop_signal`): the caller must not go on as if
training had finished. A non-finite loss stops training without saving, leaving the last
good checkpoint.

The models are built under the Keras dtype policy of `train.precision` and give float32
outputs (`sketch_tf.train.precision`); with `mixed_float16` the step differentiates the loss
times the LossScaleOptimizer's dynamic scale, clips the scaled gradients at the scaled norm,
and makes the replicas agree on skipping a step whose gradients overflowed
(`agree_on_finite`); skipped steps show as drops of the `loss_scale` summary.

A run that starts from scratch calls the warm start it is given (`init_fn`; the run helpers
build it from `config.init`: `sketch_tf.train.run.warm_start_fn`); models outside
`config.train.trainable` are frozen (`build_state`). Periodic evaluation (`train.eval_every`)
runs on the chief only, which alone writes `<workdir>/eval`. Stages and ablations are run by
`sketch_tf.train.run` on top of this; this module imports nothing above it (no run folder
loading, no export, no family).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from sketch_tf.core import (
    autograph,  # noqa: F401  (traced as written: core/autograph.py)
    kernels,
)
from sketch_tf.core.files import write_atomic
from sketch_tf.models.variables import unique_variables
from sketch_tf.train import precision as precision_lib
from sketch_tf.train import strategy as strategy_lib
from sketch_tf.train.schedules import learning_rate_schedule
from sketch_tf.train.tasks import LossContext, Task

#: Files and folders of a run folder (see `sketch_tf.train.run`).
CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "ckpt"
TRAIN_SUMMARY_SUBDIR = "train"
EVAL_SUMMARY_SUBDIR = "eval"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left in place."""


@dataclass
class TrainResult:
    """What `train()` did. `status` is `completed` or `interrupted`; `stop_signal` is the
    signal number (SIGTERM, SIGINT) that interrupted it, None otherwise (completed, or
    `stop_after_steps`)."""

    step: int
    status: str
    losses: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    examples_per_s: float = 0.0
    stop_signal: int | None = None


def build_optimizer(train: ml_collections.ConfigDict) -> keras.optimizers.Optimizer:
    """Keras optimizer from `config.train` (call under `strategy.scope()`), wrapped in a
    LossScaleOptimizer for `train.precision=mixed_float16` (`precision.wrap_optimizer`)."""
    lr = learning_rate_schedule(train)
    if train.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr)
    elif train.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=float(train.weight_decay))
    elif train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(lr, momentum=float(train.momentum), nesterov=True)
    else:
        raise ValueError(f"unknown train.optimizer {train.optimizer!r}")
    return precision_lib.wrap_optimizer(optimizer, train.precision)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))


@dataclass
class TrainState:
    """Models, optimizer and checkpoint objects of one run (shared by train/evaluate/export)."""

    models: dict[str, Any]
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    checkpoint: tf.train.Checkpoint
    variables: list


def build_state(task: Task, strategy=None) -> TrainState:
    """Builds the task's models and the optimizer under `strategy.scope()` and the checkpoint
    that tracks them. Nothing is restored yet.

    Models outside `task.trainable_models` (`config.train.trainable`) are frozen
    (`model.trainable = False`): the optimizer never sees them and their BatchNorm layers run
    on their moving statistics, so a frozen model stays bit-identical while others train.
    With more than one replica in sync and `config.train.sync_batch_norm` (the default), every
    BatchNormalization layer is synchronised (`synchronize_batch_norm`). The models are built
    under the Keras dtype policy of `config.train.precision` (restored afterwards) and must
    give float32 outputs (`precision.check_float32_outputs`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    precision = task.config.train.precision
    with strategy.scope():
        with precision_lib.policy(precision):
            models = task.build_models()
        precision_lib.check_float32_outputs(models, precision)
        if strategy.num_replicas_in_sync > 1 and task.config.train.sync_batch_norm:
            synchronize_batch_norm(models)
        trainable = task.trainable_models(models)
        for name, model in models.items():
            if name not in trainable:
                model.trainable = False
        optimizer = build_optimizer(task.config.train)
        variables = task.trainable_variables(models)
        optimizer.build(variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(
        step=step,
        optimizer=optimizer,
        models=models,
        # Listed explicitly as well: Keras keeps RNG seed states and some statistics in
        # variables that object-graph tracking does not always reach.
        model_variables=unique_variables(models),
    )
    return TrainState(models, optimizer, step, checkpoint, variables)


def synchronize_batch_norm(models: dict[str, Any]) -> int:
    """Makes every `keras.layers.BatchNormalization` of `models` (nested models included)
    normalise with global-batch statistics in a distributed step: mean and variance are
    all-reduced over the replicas (Keras' `synchronized=True`; three small all-reduces per
    layer per step), so the activations, losses and moving averages equal those of one
    replica on the same global batch. Outside a replica context (evaluation, export) and at
    inference (moving statistics) nothing changes. Call before the first trace. Returns the
    number of layers changed."""
    changed = 0
    for model in models.values():
        # Keras' own traversal: it also reaches layers held by custom layers' attributes,
        # which `model.layers` does not list.
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
                layer.synchronized = True
                changed += 1
    return changed


def checkpoint_step(checkpoint_dir: str) -> int | None:
    """Step of the latest checkpoint in `checkpoint_dir` (from its `ckpt-<step>` name: the
    loop numbers checkpoints by step), or None when there is none. Reads no variable."""
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is None:
        return None
    return int(latest.rsplit("-", 1)[-1])


def restore_latest(state: TrainState, checkpoint_dir: str, *, for_training: bool) -> str | None:
    """Restores the latest checkpoint in `checkpoint_dir` into `state`; returns its path.

    Raises a clear error when a checkpoint exists but does not match the models built from
    the config (e.g. a different backbone in the same workdir).
    """
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is None:
        return None
    try:
        status = state.checkpoint.restore(latest)
        if for_training:
            status.assert_existing_objects_matched()
        else:
            status.expect_partial()
    except (AssertionError, ValueError) as e:
        raise ValueError(
            f"checkpoint {latest} does not match the models built from this config "
            f"(was the workdir trained with another model config?): {e}"
        ) from e
    return latest


#: Name of the training input position in the checkpoint (`_input_iterator`).
INPUT_ITERATOR = "input_iterator"


def choose_input_sharding(task: Task, strategy, setting: str = "auto") -> tuple[str, str]:
    """How the workers of `strategy` split the training input, and why (for the log).

    - `"file"`: each worker builds the task's input over its own subset of the record
      shards (`Task.build_train_dataset(..., input_context=...)`); no record is read twice,
      and the global batch is the workers' batches together (not one replica's batches).
    - `"data"`: each worker computes the same global batches and its replicas keep their rows
      of them, so a distributed step sees exactly the batch of one replica (the tests compare
      losses this way). Every worker decodes the whole batch.

    `setting` is `config.train.input_sharding`: `"auto"` picks `"file"` when the task reads a
    plain record stream (`Task.train_input_shards()` is not None) with at least one shard
    per worker, else `"data"`. One worker (default or MirroredStrategy) is always `"data"`.

    Raises:
      ValueError: `setting="file"` where it cannot work (naming the task and the counts).
    """
    workers = strategy_lib.num_workers(strategy)
    if workers == 1:
        return "data", "one worker"
    shards = task.train_input_shards()
    if setting == "data":
        return "data", "train.input_sharding=data"
    if shards is None:
        why = f"the {task.name} training input samples from every class on each worker"
        if setting == "file":
            raise ValueError(f"train.input_sharding=file: {why}; use auto or data")
        return "data", why
    if shards < workers:
        why = f"{shards} training shard(s) for {workers} workers"
        if setting == "file":
            raise ValueError(
                f"train.input_sharding=file: {why}; write more shards (prepare_data.py "
                "--shard_mb) or use --config.train.input_sharding=data"
            )
        return "data", why
    return "file", f"{shards} training shards over {workers} workers"


def _input_iterator(dataset, state: TrainState, restored, start_step: int, log, saves_input=True):
    """The iterator of the global training batches, positioned where the restored run stopped.

    A `tf.data` iterator tracked by the checkpoint (`state.checkpoint.input_iterator`: its
    shuffle buffer, seed stream and read position are saved with the weights), so a resume
    decodes no batch twice and costs the same at step 10 or 100,000
    (bench/resume_bench.py), under every strategy: with data sharding every worker runs the
    same input, so the chief's saved position is every worker's. A checkpoint written before
    the input was saved, and `train.save_input_position=False` (`saves_input`: smaller
    checkpoints when shuffle buffers are large), replay the stream instead: the dataset skips
    the `start_step` batches already consumed, which gives the same batches but decodes them
    again. Either way the batches after a resume are those of an uninterrupted run.
    """
    if not saves_input:
        if start_step:
            log(f"input: replaying the {start_step} batches already consumed")
            dataset = dataset.skip(start_step)
        return iter(dataset)
    iterator = iter(dataset)
    state.checkpoint.input_iterator = iterator
    if restored and start_step:
        saved = {name for name, _ in tf.train.list_variables(restored)}
        if any(name.startswith(f"{INPUT_ITERATOR}/") for name in saved):
            tf.train.Checkpoint(input_iterator=iterator).read(restored).expect_partial()
            log(f"input position restored from {restored}")
        else:
            iterator = iter(dataset.skip(start_step))
            state.checkpoint.input_iterator = iterator
            log(f"{restored} holds no input position: replaying {start_step} batches")
    return iterator


def _file_sharded_iterator(task: Task, strategy, global_batch, seed, models, start_step, log):
    """Per-worker input over each worker's own shards (`choose_input_sharding` "file"), as a
    distributed iterator. TF 2.21's distributed iterators cannot be checkpointed ("Checkpoint
    was expecting it to be a trackable object"), so a resume replays each worker's stream:
    it skips the batches that worker's replicas consumed."""
    local_replicas = strategy.num_replicas_in_sync // strategy_lib.num_workers(strategy)
    if start_step:
        log(f"input (sharded by file): replaying the {start_step} steps already consumed")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(global_batch)
        dataset = task.build_train_dataset(batch, seed, models=models, input_context=context)
        return dataset.skip(start_step * local_replicas) if start_step else dataset

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class InputError(RuntimeError):
    """The training input failed (a bad record or image bytes in the records); the message
    holds TF's error and the command that lists every bad record."""


def _next_batch(iterator, step: int, config):
    """`next(iterator)`; a failing input becomes an InputError naming `prepare_data.py
    --verify` (TF's own message names the shard and record for record-level problems, but
    an image that does not decode fails inside the decoder, after sampling, anonymously)."""
    try:
        return next(iterator)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
        # `data` is the family's section: not every task reads records from a `root`.
        root = config.data.get("root") if "data" in config else None
        hint = (
            f"list every bad shard / record with: python prepare_data.py --verify={root}"
            if root
            else "check the training records with prepare_data.py --verify=<records folder>"
        )
        hint += " (or rerun with SKETCH_TF_CHECK_RECORDS=1 to stop at the first bad record)"
        first = (err.message or str(err)).strip().splitlines()[0][:2000]
        raise InputError(
            f"the training input failed before step {step + 1}: {first}; {hint}"
        ) from err


class WorkdirError(RuntimeError):
    """The run folder cannot be written (not a folder, no permission, disk full); the message
    names the path and what is still intact."""


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Saves the resolved config as `<workdir>/config.json` (read back by evaluate/export).

    Raises:
      WorkdirError: `workdir` cannot be created or written.
    """
    try:
        write_atomic(
            os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2, sort_keys=True)
        )
    except OSError as err:
        raise WorkdirError(f"workdir {workdir} is not writable: {err}") from err


def _save_checkpoint(manager, step: int) -> str:
    """`manager.save(step)`, turning a failed write (disk full, I/O error) into a WorkdirError
    that names the checkpoint and the last complete one. The manager's `checkpoint` file is
    only rewritten after a complete save, so the previous checkpoint still loads; the partial
    files of the failed one are removed."""
    previous = manager.latest_checkpoint
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as err:
        prefix = os.path.join(manager.directory, f"ckpt-{step}")
        for path in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*"):
            try:
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
            except (tf.errors.OpError, OSError):
                pass  # the disk may refuse even this; the `checkpoint` file never names it
        detail = getattr(err, "message", None) or str(err)
        raise WorkdirError(
            f"could not write checkpoint {prefix} ({detail.strip()}; disk full?); the last "
            f"complete checkpoint {previous or '(none)'} is intact and a rerun resumes from it"
        ) from err


def write_eval_results(workdir: str, step: int, result: dict[str, Any]) -> str:
    """Writes evaluation scalars and images to `<workdir>/eval` (TensorBoard) and the whole
    result to `<workdir>/eval/metrics_<step>.json` (atomically). Returns the JSON path."""
    eval_dir = os.path.join(workdir, EVAL_SUMMARY_SUBDIR)
    os.makedirs(eval_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(eval_dir)
    with writer.as_default(step=step):
        for name, value in result.get("scalars", {}).items():
            tf.summary.scalar(name, float(value))
        for name, images in result.get("images", {}).items():
            images = np.asarray(images)
            if images.ndim == 3:
                images = images[None]
            tf.summary.image(name, images, max_outputs=8)
    writer.flush()
    writer.close()
    path = os.path.join(eval_dir, f"metrics_{step}.json")
    payload = {k: v for k, v in result.items() if k != "images"}
    payload["step"] = int(step)
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
    return path


def evaluate_and_write(
    task: Task,
    models: dict[str, Any],
    workdir: str,
    step: int,
    before_write: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], str]:
    """Evaluates `models` (`task.evaluate(models, workdir)`: its pictures and tables go to
    `<workdir>/eval` too) and writes the result for `step` (`write_eval_results`).
    `before_write(result)` may add to the result first (evaluate.py: the checkpoint and the
    ablations). Returns (result, path of `metrics_<step>.json`)."""
    result = task.evaluate(models, workdir)
    if before_write is not None:
        before_write(result)
    return result, write_eval_results(workdir, step, result)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


#: A warm start: called with the fresh TrainState of a run that starts from scratch (not on a
#: resume); returns the names of the models it initialised (`sketch_tf.train.run.warm_start_fn`).
InitFn = Callable[[TrainState], Any]


def train(
    task: Task,
    workdir: str,
    strategy: tf.distribute.Strategy | None = None,
    *,
    init_fn: InitFn | None = None,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Trains `task` until `config.train.num_steps`, resuming from `<workdir>/ckpt`.

    Args:
      task: the model family; its `config` (validated) drives the run.
      workdir: run folder: `ckpt/`, `train/` and `eval/` summaries, `config.json`.
      strategy: a `tf.distribute.Strategy` (default strategy when None). Must be the one the
        caller created before any op when logical devices are configured.
      init_fn: the warm start of a run that starts from scratch (`InitFn`); required when the
        config sets `init.workdir` (`sketch_tf.train.run.train_run` passes it).
      stop_after_steps: stop (with a checkpoint, status `interrupted`) after this many steps
        of this call, as if interrupted; for tests and smoke runs.
      log: console progress sink.

    Returns:
      TrainResult with the final step and the last logged losses; status `interrupted` and
      `stop_signal` set when SIGTERM / SIGINT stopped it (checkpoint saved).

    Raises:
      NonFiniteLossError: a loss term was NaN/inf; nothing was saved for that step.
      WorkdirError: the workdir or a checkpoint could not be written (the last complete
        checkpoint is intact).
      InputError: the training input failed (bad records; the last checkpoint is intact).
      ValueError: `config.init.workdir` is set but no `init_fn` was given.
    """
    strategy = strategy or tf.distribute.get_strategy()
    config, train_cfg = task.config, task.config.train
    _check_init_fn(config, init_fn)
    # 1. Seeds, determinism, and the run folder (config.json, the checkpoint folder).
    keras.utils.set_random_seed(int(config.seed))
    warning = precision_lib.device_warning(train_cfg.precision)
    if warning:
        log(warning)
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    kernels.configure(train_cfg.kernels)
    folders = _prepare_workdir(config, workdir, strategy)

    # 2. Models and optimizer; resume from the latest checkpoint, or warm start a new run.
    state = build_state(task, strategy)
    manager = tf.train.CheckpointManager(
        state.checkpoint, folders.checkpoints, max_to_keep=int(train_cfg.keep_checkpoints)
    )
    restored = _restore_or_warm_start(state, workdir, init_fn, log)
    start_step, num_steps = int(state.step.numpy()), int(train_cfg.num_steps)
    _check_batch_size(int(train_cfg.batch_size), strategy.num_replicas_in_sync)
    if start_step >= num_steps:
        log(f"nothing to do: step {start_step} >= train.num_steps={num_steps}")
        return TrainResult(start_step, "completed", checkpoint=restored)

    # 3. The input, positioned after the batches already consumed, and the distributed step.
    iterator, sharding = _training_input(task, strategy, state, restored, start_step, log)
    train_step = _make_train_step(task, state, strategy, sharding, log)

    # 4. The steps, each followed by the periodic actions; the last checkpoint.
    writer = tf.summary.create_file_writer(folders.summaries)
    progress = _Progress(writer, state.optimizer, num_steps, int(train_cfg.batch_size), log)
    step, status = start_step, "completed"
    with _StopRequest() as stop:
        while step < num_steps:
            schedule_values = task.schedule_values(state.models, step)
            losses = train_step(_next_batch(iterator, step, config))
            values = _finite_losses(losses, step, manager, writer)
            step += 1
            progress.add(values)
            if step % train_cfg.log_every == 0 or step == num_steps:
                progress.log_and_summarise(step, schedule_values)
            if step % train_cfg.checkpoint_every == 0 and step < num_steps:
                _save(state, manager, step)
            # Only the chief evaluates: the others would write the same files into the same
            # <workdir>/eval (evaluation runs outside strategy.run, no collectives).
            eval_every = train_cfg.eval_every
            if folders.chief and eval_every and step % eval_every == 0 and step < num_steps:
                evaluate_and_write(task, state.models, workdir, step)
            if stop.signal is not None or (
                stop_after_steps is not None
                and progress.run_steps >= stop_after_steps
                and step < num_steps
            ):
                status = "interrupted"
                break
        path = _save(state, manager, step)

    # 5. Close the summaries, drop a worker's scratch folder, report.
    writer.close()
    if folders.scratch:
        shutil.rmtree(folders.scratch, ignore_errors=True)
    if status == "interrupted":
        why = f"signal {stop.signal}" if stop.signal is not None else "stop_after_steps"
        log(f"interrupted ({why}) at step {step}; checkpoint saved: {path}")
    else:
        log(f"training finished at step {step}; checkpoint: {path}")
    return TrainResult(step, status, progress.last_logged, path, progress.last_rate, stop.signal)


def _check_init_fn(config: ml_collections.ConfigDict, init_fn: InitFn | None) -> None:
    """A config with a warm start (`init.workdir`) needs the `init_fn` that applies it: the
    loop itself does not load other runs."""
    if init_fn is None and config.init.workdir:
        raise ValueError(
            f"config.init.workdir={config.init.workdir} is set but loop.train got no init_fn: "
            "train through sketch_tf.train.run.train_run, or pass "
            "init_fn=run.warm_start_fn(config.init)"
        )


@dataclass(frozen=True)
class _Folders:
    """Where this worker writes: the chief into the run folder; other workers (which must
    take part in saving under MultiWorkerMirroredStrategy, but whose files do not count)
    into `<workdir>/.scratch/<worker>/`, removed at the end."""

    chief: bool
    checkpoints: str
    summaries: str
    scratch: str | None


def _prepare_workdir(config: ml_collections.ConfigDict, workdir: str, strategy) -> _Folders:
    """This worker's folders; the chief writes `<workdir>/config.json` (WorkdirError when the
    workdir cannot be written)."""
    if strategy_lib.is_chief(strategy):
        write_config(config, workdir)
        return _Folders(
            True,
            os.path.join(workdir, CHECKPOINT_SUBDIR),
            os.path.join(workdir, TRAIN_SUMMARY_SUBDIR),
            None,
        )
    scratch = os.path.join(workdir, ".scratch", strategy_lib.worker_id(strategy))
    return _Folders(
        False,
        os.path.join(scratch, CHECKPOINT_SUBDIR),
        os.path.join(scratch, TRAIN_SUMMARY_SUBDIR),
        scratch,
    )


def _restore_or_warm_start(
    state: TrainState, workdir: str, init_fn: InitFn | None, log: Callable[[str], None]
) -> str | None:
    """Restores the latest checkpoint of `<workdir>/ckpt` (every worker reads the chief's);
    without one, calls `init_fn` (a new run's warm start). Returns the restored path."""
    restored = restore_latest(state, os.path.join(workdir, CHECKPOINT_SUBDIR), for_training=True)
    if restored:
        log(f"resumed from {restored} at step {int(state.step.numpy())}")
    elif init_fn is not None:
        init_fn(state)
    return restored


def _check_batch_size(global_batch: int, replicas: int) -> None:
    if global_batch % replicas:
        raise ValueError(
            f"train.batch_size={global_batch} is not divisible by the {replicas} replicas in sync"
        )


def _training_input(task: Task, strategy, state: TrainState, restored, start_step: int, log):
    """(iterator of the global batches, sharding "file" or "data"): how the workers split the
    input (`choose_input_sharding`, logged with several workers), positioned at `start_step`."""
    train_cfg = task.config.train
    seed, global_batch = int(task.config.seed), int(train_cfg.batch_size)
    sharding, why = choose_input_sharding(task, strategy, str(train_cfg.input_sharding))
    if strategy_lib.num_workers(strategy) > 1:
        log(f"input sharded by {sharding} ({why})")
    if sharding == "file":
        iterator = _file_sharded_iterator(
            task, strategy, global_batch, seed, state.models, start_step, log
        )
    else:
        dataset = task.build_train_dataset(global_batch, seed, models=state.models)
        iterator = _input_iterator(
            dataset, state, restored, start_step, log,
            saves_input=bool(train_cfg.save_input_position),
        )  # fmt: skip
    return iterator, sharding


def _make_train_step(task: Task, state: TrainState, strategy, sharding: str, log):
    """The `tf.function` of one distributed step: a global batch -> the loss terms summed
    over the replicas (each replica's terms are its shares of the global-batch mean)."""
    train_cfg = task.config.train
    global_batch = int(train_cfg.batch_size)
    replicas = strategy.num_replicas_in_sync
    replica_rows = global_batch // replicas
    loss_ctx = LossContext(global_batch_size=global_batch, num_replicas=replicas)
    variables, optimizer = state.variables, state.optimizer
    clipnorm = float(train_cfg.clipnorm)
    scaled = precision_lib.uses_loss_scaling(train_cfg.precision)

    if not variables:
        # E.g. a frozen pretrained trunk without a head and without the domain term: the run
        # evaluates the frozen features; the steps compute (and log) the losses only.
        log(
            "nothing to train: every model is frozen or has no trainable weight; the steps only "
            "compute the losses"
        )

    def replica_batches(batch):
        """A global batch -> per-replica values: replica r gets rows [r * b, (r + 1) * b)."""

        def rows(context):
            first = context.replica_id_in_sync_group * replica_rows
            return tf.nest.map_structure(lambda t: t[first : first + replica_rows], batch)

        return strategy.experimental_distribute_values_from_function(rows)

    def replica_step(batch):
        with tf.GradientTape() as tape:
            losses = task.compute_losses(state.models, batch, loss_ctx)
            # mixed_float16: the loss times the optimizer's dynamic loss scale, so that small
            # float16 gradients do not underflow; the LossScaleOptimizer divides the
            # gradients by the same scale (and skips a step whose gradients are not finite).
            # Every other optimizer returns the loss unchanged.
            objective = optimizer.scale_loss(losses["total"])
        if not variables:
            return losses
        grads = tape.gradient(objective, variables)
        if clipnorm > 0:
            # Clip the *global* gradient: sum over replicas first, clip, then hand each
            # replica 1/R of it (the optimizer sums replicas again). Scaled gradients are
            # clipped at the scaled norm: the same as clipping the unscaled ones at clipnorm.
            ctx = tf.distribute.get_replica_context()
            if replicas > 1:
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, clipnorm * precision_lib.loss_scale(optimizer))
            if replicas > 1:
                grads = [g / float(replicas) for g in grads]
        elif scaled and replicas > 1:
            grads = agree_on_finite(grads)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return losses

    @tf.function
    def train_step(batch):
        if sharding == "data" and replicas > 1:
            batch = replica_batches(batch)
        per_replica = strategy.run(replica_step, args=(batch,))
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for name, value in per_replica.items()
        }

    return train_step


def agree_on_finite(grads: list) -> list:
    """Per-replica gradients (in a replica context) that are finite on every replica or on
    none: when any replica's gradients hold an inf / NaN, a NaN is added to the first
    gradient of every replica.

    A LossScaleOptimizer decides from each replica's own gradients, before the optimizer
    sums them over the replicas, whether to apply the step; with one replica overflowing
    and another not, the replicas would disagree (an all-reduce entered by some replicas
    only, or a skipped step's inf summed into the weights). One scalar all-reduce makes them
    agree, instead of all-reducing every gradient twice. Returns the new list.
    """
    ctx = tf.distribute.get_replica_context()
    present = [i for i, g in enumerate(grads) if g is not None]
    if not present:
        return grads
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(grads[i])) for i in present])
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
    first = present[0]
    out = list(grads)
    poison = tf.where(bad > 0, tf.constant(float("nan")), tf.constant(0.0))
    out[first] = grads[first] + tf.cast(poison, grads[first].dtype)
    return out


def _finite_losses(losses, step: int, manager, writer) -> dict[str, float]:
    """The step's loss terms as floats; a NaN / infinite one closes the summaries and raises
    NonFiniteLossError naming the step and the last good checkpoint (nothing is saved)."""
    values = {k: float(v.numpy()) for k, v in losses.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        writer.close()
        last = manager.latest_checkpoint
        raise NonFiniteLossError(
            f"non-finite loss at step {step + 1}: {bad}; training stopped, last good "
            f"checkpoint: {last or 'none (no checkpoint was written yet)'}"
        )
    return values


def _save(state: TrainState, manager, step: int) -> str:
    """Checkpoint of `step` (the step variable set first, so a resume starts after it)."""
    state.step.assign(step)
    return _save_checkpoint(manager, step)


class _Progress:
    """The log line and the train summaries: loss terms averaged over the steps since the
    last line, examples per second over them, learning rate, schedule values, and an ETA
    from the rate of the whole call."""

    def __init__(self, writer, optimizer, num_steps: int, global_batch: int, log):
        self.writer, self.optimizer, self.log = writer, optimizer, log
        self.num_steps, self.global_batch = num_steps, global_batch
        self.run_start, self.run_steps = time.perf_counter(), 0
        self._reset()
        self.last_logged: dict[str, float] = {}
        self.last_rate = 0.0

    def _reset(self) -> None:
        self.interval_losses: dict[str, list[float]] = {}
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def add(self, values: dict[str, float]) -> None:
        """Counts one step of this call and its loss terms."""
        self.run_steps += 1
        self.interval_steps += 1
        for k, v in values.items():
            self.interval_losses.setdefault(k, []).append(v)

    def log_and_summarise(self, step: int, schedule_values: dict[str, Any]) -> None:
        """Writes the train summaries of `step` and logs its line; starts a new interval."""
        elapsed = time.perf_counter() - self.interval_start
        self.last_rate = self.interval_steps * self.global_batch / max(elapsed, 1e-9)
        self.last_logged = {k: float(np.mean(v)) for k, v in self.interval_losses.items()}
        lr = current_learning_rate(self.optimizer)
        with self.writer.as_default(step=step):
            for k, v in self.last_logged.items():
                tf.summary.scalar(f"loss/{k}", v)
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("examples_per_s", self.last_rate)
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                # Halved at each skipped (non-finite) step: a falling curve means skips.
                tf.summary.scalar("loss_scale", float(precision_lib.loss_scale(self.optimizer)))
            for k, v in schedule_values.items():
                tf.summary.scalar(f"schedule/{k}", float(v))
        self.writer.flush()
        overall = self.run_steps / max(time.perf_counter() - self.run_start, 1e-9)
        eta = (self.num_steps - step) / overall if overall > 0 else float("inf")
        terms = ", ".join(f"{k} {v:.4f}" for k, v in self.last_logged.items() if k != "total")
        self.log(
            f"step {step}/{self.num_steps} | loss {self.last_logged['total']:.4f}"
            + (f" ({terms})" if terms else "")
            + f" | {self.last_rate:.1f} ex/s | lr {lr:.2e} | ETA {_format_eta(eta)}"
        )
        self._reset()
