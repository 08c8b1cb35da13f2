"""A tiny Task for testing the training loop, evaluate.py and export.py without a model family.

Four-class classification of 8-d vectors with an embedding pull term computed over the
gathered global batch (so the cross-replica path of `LossContext` is exercised), dropout (so
RNG state must be checkpointed) and a step schedule value. Two models, `trunk` (features,
optionally with BatchNorm) and `head` (logits), so that stages can freeze one of them.
"""

import os

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from sketch_tf.models.layers import float32_output
from sketch_tf.train.config_sections import add_run_sections, base_train_config
from sketch_tf.train.tasks import Task, register_task

NUM_FEATURES, NUM_CLASSES = 8, 4


def _data(seed: int, n: int):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(NUM_CLASSES, NUM_FEATURES)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    x = centers[labels] + 0.5 * rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
    return x.astype(np.float32), labels.astype(np.int32)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "tiny"
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        {"hidden": 16, "dropout": 0.2, "poison_after": -1, "batchnorm": False}
    )
    # data.shards > 0: the training data is that many in-memory "shards", which workers may
    # split by file (`train_input_shards`); 0: a sampled input, split by data only.
    config.data = ml_collections.ConfigDict({"shards": 0})
    config.train = base_train_config()
    config.train.update(
        batch_size=8, num_steps=6, log_every=1, checkpoint_every=100, learning_rate=0.05
    )
    add_run_sections(config)
    config.ablations.no_dropout = ml_collections.ConfigDict({"model": {"dropout": 0.0}})
    return config


class TinyEvaluator:
    """Accuracy on held-out vectors, a dummy picture, and a file per evaluating process."""

    name = "tiny/accuracy"

    def __init__(self, task):
        self.task = task

    def run(self, models, workdir=None):
        x, y = _data(123, 64)
        pred = np.argmax(self.task.logits(models, x, training=False).numpy(), -1)
        img = np.zeros((1, 4, 4, 3), np.uint8)
        if workdir:  # a "picture" file per evaluating process: only the chief may write one
            os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
            with open(os.path.join(workdir, "eval", f"picture_{os.getpid()}.txt"), "w") as f:
                f.write("evaluated\n")
        return {"scalars": {"accuracy": float(np.mean(pred == y))}, "images": {"dummy": img}}


class TinyServing:
    """`serving_default`: features [N, 8] -> logits [N, 4] and the predicted label."""

    def __init__(self, task):
        self.task = task

    def signatures(self, models, gallery=None):
        @tf.function(
            input_signature=[tf.TensorSpec([None, NUM_FEATURES], tf.float32, name="features")]
        )
        def serve(features):
            logits = self.task.logits(models, features, training=False)
            return {"logits": logits, "label": tf.argmax(logits, -1, output_type=tf.int32)}

        return {"serving_default": serve.get_concrete_function()}

    def warmup_inputs(self, signatures=None):
        return {"serving_default": {"features": _data(7, 3)[0]}}


@register_task("tiny")
class TinyTask(Task):
    evaluator_types = (TinyEvaluator,)
    serving_type = TinyServing

    @classmethod
    def validate_config(cls, config):
        problems = []
        if config.model.hidden <= 0:
            problems.append(f"model.hidden must be > 0, got {config.model.hidden}")
        if not 0 <= config.model.dropout < 1:
            problems.append(f"model.dropout must be in [0, 1), got {config.model.dropout}")
        return problems

    def build_models(self):
        inputs = keras.Input((NUM_FEATURES,), name="features")
        h = keras.layers.Dense(self.config.model.hidden)(inputs)
        if self.config.model.batchnorm:
            h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Activation("relu")(h)
        h = keras.layers.Dropout(self.config.model.dropout, seed=1)(h)
        # float32 outputs under any train.precision (the loop checks it).
        trunk = keras.Model(inputs, float32_output(h), name="tiny_trunk")
        features = keras.Input((self.config.model.hidden,), name="hidden")
        logits = float32_output(keras.layers.Dense(NUM_CLASSES)(features))
        head = keras.Model(features, logits, name="tiny_head")
        return {"trunk": trunk, "head": head}

    @staticmethod
    def logits(models, x, training):
        return models["head"](models["trunk"](x, training=training), training=training)

    def train_input_shards(self):
        return int(self.config.data.shards) or None

    def build_train_dataset(self, global_batch_size, seed, models=None, input_context=None):
        x, y = _data(seed, 256)
        if input_context is not None:  # this worker's shards of the 256 examples
            chunks = np.array_split(np.arange(256), int(self.config.data.shards))
            mine = np.concatenate(
                chunks[input_context.input_pipeline_id :: input_context.num_input_pipelines]
            )
            x, y = x[mine], y[mine]
        poison_after = int(self.config.model.poison_after)
        ds = tf.data.Dataset.from_tensor_slices({"x": x, "y": y})
        ds = ds.shuffle(256, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(global_batch_size, drop_remainder=True)

        def add_poison(i, batch):
            flag = float(poison_after >= 0) * tf.cast(i >= max(poison_after, 0), tf.float32)
            batch["poison"] = tf.fill([global_batch_size], flag)
            return batch

        return tf.data.Dataset.zip(tf.data.Dataset.counter(), ds).map(add_poison)

    def compute_losses(self, models, batch, ctx):
        logits = self.logits(models, batch["x"], training=True)
        ce = keras.losses.sparse_categorical_crossentropy(batch["y"], logits, from_logits=True)
        ce = tf.where(batch["poison"] > 0, float("inf"), ce)  # a diverged step, on demand
        # Pull embeddings of one class together over the *global* batch.
        emb = ctx.all_gather(logits)
        labels = ctx.all_gather(batch["y"])
        same = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
        d2 = tf.reduce_sum(tf.square(emb[:, None] - emb[None, :]), -1)
        pull = tf.reduce_sum(same * d2) / tf.reduce_sum(same)
        ce_term = ctx.mean(ce)
        pull_term = ctx.share(0.01 * pull)
        return {"total": ce_term + pull_term, "ce": ce_term, "pull": pull_term}

    def schedule_values(self, models, step):
        return {"ramp": min(1.0, step / 4.0)}
