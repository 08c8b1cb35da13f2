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
deterministic ops). SIGTERM / SIGINT save a checkpoint and return; a non-finite loss stops
training without saving, leaving the last good checkpoint.

A run that starts from scratch applies the config's warm start (`config.init`: named models
restored from another run, `apply_init`); models outside `config.train.trainable` are frozen
(`build_state`). Periodic evaluation (`train.eval_every`) runs on the chief only, which alone
writes `<workdir>/eval`. Stages and ablations are run by `sketch_tf.train.run` on top of this.
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

from sketch_tf.models.variables import unique_variables
from sketch_tf.train import strategy as strategy_lib
from sketch_tf.train.schedules import learning_rate_schedule
from sketch_tf.train.tasks import LossContext, Task

CHECKPOINT_SUBDIR = "ckpt"
TRAIN_SUMMARY_SUBDIR = "train"
EVAL_SUMMARY_SUBDIR = "eval"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left in place."""


@dataclass
class TrainResult:
    """What `train()` did. `status` is `completed` or `interrupted`."""

    step: int
    status: str
    losses: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    examples_per_s: float = 0.0


def build_optimizer(train: ml_collections.ConfigDict) -> keras.optimizers.Optimizer:
    """Keras optimizer from `config.train` (call under `strategy.scope()`)."""
    lr = learning_rate_schedule(train)
    if train.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=float(train.weight_decay))
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=float(train.momentum), nesterov=True)
    raise ValueError(f"unknown train.optimizer {train.optimizer!r}")


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
    BatchNormalization layer is synchronised (`synchronize_batch_norm`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        models = task.build_models()
        if strategy.num_replicas_in_sync > 1 and task.config.train.get("sync_batch_norm", True):
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


def copy_model_weights(src: Any, dst: Any, name: str, source: str) -> None:
    """Assigns every weight of Keras model `src` to the same-position weight of `dst`.

    Raises:
      ValueError naming the model, the variable and both shapes on any mismatch (nothing is
      assigned then).
    """
    sw, dw = src.weights, dst.weights
    if len(sw) != len(dw):
        raise ValueError(
            f"init: model {name!r} has {len(dw)} weights here but {len(sw)} in {source}: "
            "the two runs build different architectures for it"
        )
    for s, d in zip(sw, dw, strict=True):
        if tuple(s.shape) != tuple(d.shape):
            raise ValueError(
                f"init: model {name!r} variable {d.path!r} has shape {tuple(d.shape)} here but "
                f"{tuple(s.shape)} in {source} (variable {s.path!r})"
            )
    for s, d in zip(sw, dw, strict=True):
        d.assign(s)


def apply_init(state: TrainState, init: ml_collections.ConfigDict, log=print) -> list[str]:
    """Warm start: restores `init.models` (all models both runs have, when empty) from the
    latest checkpoint of the run in `init.workdir`. Returns the restored model names.

    Raises:
      FileNotFoundError when `init.workdir` holds no trained run; ValueError when that run
      stopped before its `train.num_steps` (an unfinished earlier stage: finish it first), or
      naming the model (and variable) when a model is missing there or its weights do not fit.
    """
    from sketch_tf.train.run import load_run

    source = load_run(str(init.workdir))
    planned = int(source.config.train.num_steps)
    if source.step < planned:
        raise ValueError(
            f"init.workdir={init.workdir}: that run is unfinished (step {source.step} of "
            f"{planned}); finish it first (python train.py --workdir={init.workdir} resumes "
            "it, or the multi-stage recipe resumes its stage)"
        )
    wanted = tuple(init.get("models", ()) or ())
    names = list(wanted) or sorted(m for m in state.models if m in source.state.models)
    for name in names:
        if name not in state.models:
            raise ValueError(
                f"init.models: {name!r} is not a model of this run {sorted(state.models)}"
            )
        if name not in source.state.models:
            raise ValueError(
                f"init.models: model {name!r} is not in {source.checkpoint} (it has "
                f"{sorted(source.state.models)})"
            )
        copy_model_weights(source.state.models[name], state.models[name], name, source.checkpoint)
    if not names:
        raise ValueError(
            f"init: no model in common between this run {sorted(state.models)} and "
            f"{source.checkpoint} {sorted(source.state.models)}"
        )
    log(f"initialised {names} from {source.checkpoint}")
    return names


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
    tmp = os.path.join(workdir, ".config.json.tmp")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        os.replace(tmp, os.path.join(workdir, "config.json"))
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)
    os.replace(tmp, path)
    return path


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def train(
    task: Task,
    workdir: str,
    strategy: tf.distribute.Strategy | None = None,
    *,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Trains `task` until `config.train.num_steps`, resuming from `<workdir>/ckpt`.

    Args:
      task: the model family; its `config` (validated) drives the run.
      workdir: run folder: `ckpt/`, `train/` and `eval/` summaries, `config.json`.
      strategy: a `tf.distribute.Strategy` (default strategy when None). Must be the one the
        caller created before any op when logical devices are configured.
      stop_after_steps: stop (with a checkpoint, status `interrupted`) after this many steps
        of this call, as if interrupted; for tests and smoke runs.
      log: console progress sink.

    Returns:
      TrainResult with the final step and the last logged losses.

    Raises:
      NonFiniteLossError: a loss term was NaN/inf; nothing was saved for that step.
      WorkdirError: the workdir or a checkpoint could not be written (the last complete
        checkpoint is intact).
      InputError: the training input failed (bad records; the last checkpoint is intact).
    """
    strategy = strategy or tf.distribute.get_strategy()
    config = task.config
    train_cfg = config.train
    chief = strategy_lib.is_chief(strategy)
    keras.utils.set_random_seed(int(config.seed))
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()

    # Non-chief workers write their (identical) checkpoints to a scratch folder: every worker
    # must take part in saving under MultiWorkerMirroredStrategy, but only the chief's count.
    ckpt_dir = os.path.join(workdir, CHECKPOINT_SUBDIR)
    if not chief:
        ckpt_dir = os.path.join(
            workdir, ".scratch", strategy_lib.worker_id(strategy), CHECKPOINT_SUBDIR
        )
    if chief:
        write_config(config, workdir)

    state = build_state(task, strategy)
    manager = tf.train.CheckpointManager(
        state.checkpoint, ckpt_dir, max_to_keep=int(train_cfg.keep_checkpoints)
    )
    restored = restore_latest(state, os.path.join(workdir, CHECKPOINT_SUBDIR), for_training=True)
    start_step = int(state.step.numpy())
    if restored:
        log(f"resumed from {restored} at step {start_step}")
    elif config.get("init") and config.init.get("workdir"):
        apply_init(state, config.init, log)

    num_steps = int(train_cfg.num_steps)
    global_batch = int(train_cfg.batch_size)
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(
            f"train.batch_size={global_batch} is not divisible by the {replicas} replicas in sync"
        )
    if start_step >= num_steps:
        log(f"nothing to do: step {start_step} >= train.num_steps={num_steps}")
        return TrainResult(start_step, "completed", checkpoint=restored)

    sharding, why = choose_input_sharding(
        task, strategy, str(train_cfg.get("input_sharding", "auto"))
    )
    if strategy_lib.num_workers(strategy) > 1:
        log(f"input sharded by {sharding} ({why})")
    if sharding == "file":
        iterator = _file_sharded_iterator(
            task, strategy, global_batch, int(config.seed), state.models, start_step, log
        )
    else:
        dataset = task.build_train_dataset(global_batch, int(config.seed), models=state.models)
        iterator = _input_iterator(
            dataset, state, restored, start_step, log,
            saves_input=bool(train_cfg.get("save_input_position", True)),
        )  # fmt: skip
    replica_rows = global_batch // replicas

    def replica_batches(batch):
        """A global batch -> per-replica values: replica r gets rows [r * b, (r + 1) * b)."""

        def rows(context):
            first = context.replica_id_in_sync_group * replica_rows
            return tf.nest.map_structure(lambda t: t[first : first + replica_rows], batch)

        return strategy.experimental_distribute_values_from_function(rows)

    loss_ctx = LossContext(global_batch_size=global_batch, num_replicas=replicas)
    variables = state.variables
    optimizer = state.optimizer
    clipnorm = float(train_cfg.clipnorm)

    if not variables:
        # E.g. a frozen pretrained trunk without a head and without the domain term: the run
        # evaluates the frozen features; the steps compute (and log) the losses only.
        log(
            "nothing to train: every model is frozen or has no trainable weight; the steps only "
            "compute the losses"
        )

    def replica_step(batch):
        with tf.GradientTape() as tape:
            losses = task.compute_losses(state.models, batch, loss_ctx)
        if not variables:
            return losses
        grads = tape.gradient(losses["total"], variables)
        if clipnorm > 0:
            # Clip the *global* gradient: sum over replicas first, clip, then hand each
            # replica 1/R of it (the optimizer sums replicas again).
            ctx = tf.distribute.get_replica_context()
            if replicas > 1:
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, clipnorm)
            if replicas > 1:
                grads = [g / float(replicas) for g in grads]
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

    summary_dir = os.path.join(workdir, TRAIN_SUMMARY_SUBDIR)
    if not chief:
        summary_dir = os.path.join(workdir, ".scratch", strategy_lib.worker_id(strategy), "train")
    writer = tf.summary.create_file_writer(summary_dir)

    step = start_step
    interval_losses: dict[str, list[float]] = {}
    interval_start, interval_steps = time.perf_counter(), 0
    run_start, run_steps = time.perf_counter(), 0
    last_logged: dict[str, float] = {}
    last_rate = 0.0
    status = "completed"

    def save() -> str:
        state.step.assign(step)
        return _save_checkpoint(manager, step)

    with _StopRequest() as stop:
        while step < num_steps:
            schedule_values = task.schedule_values(state.models, step)
            losses = train_step(_next_batch(iterator, step, config))
            values = {k: float(v.numpy()) for k, v in losses.items()}
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                writer.close()
                last = manager.latest_checkpoint
                raise NonFiniteLossError(
                    f"non-finite loss at step {step + 1}: {bad}; training stopped, last good "
                    f"checkpoint: {last or 'none (no checkpoint was written yet)'}"
                )
            step += 1
            run_steps += 1
            interval_steps += 1
            for k, v in values.items():
                interval_losses.setdefault(k, []).append(v)

            if step % train_cfg.log_every == 0 or step == num_steps:
                elapsed = time.perf_counter() - interval_start
                last_rate = interval_steps * global_batch / max(elapsed, 1e-9)
                last_logged = {k: float(np.mean(v)) for k, v in interval_losses.items()}
                lr = current_learning_rate(optimizer)
                with writer.as_default(step=step):
                    for k, v in last_logged.items():
                        tf.summary.scalar(f"loss/{k}", v)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("examples_per_s", last_rate)
                    for k, v in schedule_values.items():
                        tf.summary.scalar(f"schedule/{k}", float(v))
                writer.flush()
                overall = run_steps / max(time.perf_counter() - run_start, 1e-9)
                eta = (num_steps - step) / overall if overall > 0 else float("inf")
                terms = ", ".join(f"{k} {v:.4f}" for k, v in last_logged.items() if k != "total")
                log(
                    f"step {step}/{num_steps} | loss {last_logged['total']:.4f}"
                    + (f" ({terms})" if terms else "")
                    + f" | {last_rate:.1f} ex/s | lr {lr:.2e} | ETA {_format_eta(eta)}"
                )
                interval_losses, interval_start, interval_steps = {}, time.perf_counter(), 0

            if step % train_cfg.checkpoint_every == 0 and step < num_steps:
                save()
            if (
                chief
                and train_cfg.eval_every
                and step % train_cfg.eval_every == 0
                and step < num_steps
            ):
                # Only the chief evaluates: the others would write the same files into the
                # same <workdir>/eval (evaluation runs outside strategy.run, no collectives).
                result = task.evaluate(state.models, workdir)
                write_eval_results(workdir, step, result)
            if stop.signal is not None or (
                stop_after_steps is not None and run_steps >= stop_after_steps and step < num_steps
            ):
                status = "interrupted"
                break

        path = save()
    writer.close()
    if not chief:
        shutil.rmtree(
            os.path.join(workdir, ".scratch", strategy_lib.worker_id(strategy)), ignore_errors=True
        )
    if status == "interrupted":
        why = f"signal {stop.signal}" if stop.signal is not None else "stop_after_steps"
        log(f"interrupted ({why}) at step {step}; checkpoint saved: {path}")
    else:
        log(f"training finished at step {step}; checkpoint: {path}")
    return TrainResult(step, status, last_logged, path, last_rate)
