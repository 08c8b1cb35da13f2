"""Zero-shot SBIR models: sketch / photo embedding towers and the adversarial domain classifier.

Towers (as in the original zero-shot SBIR model): `sketch_tf.models.towers.build_tower`,
backbone features -> global max pool (DenseNet121 gives 1024 features) -> optional projection
head (Dense) -> optional L2 normalisation, split into a cacheable trunk and a head
(`towers.tower_trunk` / `towers.tower_head`). Sketch and photo towers have separate weights by
default (`shared=True` uses one tower for both domains).

Domain classifier: GradientReversal -> 4 x [Dense 1024, BatchNorm, ReLU] -> Dense 1 (a logit of
"is a photo"). The GRL makes the towers *maximise* the classifier's loss, i.e. learn
domain-invariant embeddings; its lambda is set per epoch by the task's schedule through
`set_grl_lambda`. `domain_logits` runs it on the sketch and photo embeddings of a batch, either
once on their concatenation ("joint": BatchNorm statistics over all domains) or once per domain
("separate": per-domain BatchNorm statistics, as the original's three calls).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from sketch_tf.models.layers import GradientReversal
from sketch_tf.models.towers import build_tower

__all__ = [
    "DOMAIN_BATCHES",
    "build_domain_classifier",
    "build_zs_sbir_models",
    "domain_logits",
    "grl_layer",
    "photo_tower",
    "set_grl_lambda",
    "sketch_tower",
]

#: Name of the GradientReversal layer inside the domain classifier.
GRL_LAYER_NAME = "grl"
#: How `domain_logits` batches the embeddings of the domains through the classifier.
DOMAIN_BATCHES = ("joint", "separate")


def build_domain_classifier(
    embed_dim: int,
    *,
    hidden: int = 1024,
    num_layers: int = 4,
    grl_lambda: float = 0.0,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str = "domain_classifier",
) -> keras.Model:
    """GRL -> num_layers x [Dense hidden, BatchNorm, ReLU] -> Dense 1.

    Args:
      embed_dim: size of the embeddings fed in (float32 [B, embed_dim]).
      hidden, num_layers: the MLP (1024 and 4 in the original).
      grl_lambda: initial lambda of the gradient reversal layer.
      bn_momentum, bn_epsilon: of every BatchNormalization, Keras convention
        (``moving = momentum * moving + (1 - momentum) * batch``). Defaults: Keras's 0.99 / 1e-3;
        PyTorch's BatchNorm1d (the original) is momentum 0.9 / epsilon 1e-5 in this convention.

    Returns:
      keras.Model float32 [B, embed_dim] -> [B, 1] logits (sigmoid = P(photo)).
    """
    if hidden <= 0 or num_layers < 0:
        raise ValueError(f"hidden must be > 0 and num_layers >= 0, got {hidden}, {num_layers}")
    if not 0.0 <= bn_momentum < 1.0 or bn_epsilon <= 0:
        raise ValueError(
            f"bn_momentum must be in [0, 1) and bn_epsilon > 0, got {bn_momentum}, {bn_epsilon}"
        )
    inp = keras.Input((embed_dim,), name="embedding")
    x = GradientReversal(grl_lambda, name=GRL_LAYER_NAME)(inp)
    for i in range(num_layers):
        x = layers.Dense(hidden, name=f"dense{i}")(x)
        x = layers.BatchNormalization(
            momentum=float(bn_momentum), epsilon=float(bn_epsilon), name=f"bn{i}"
        )(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    # float32 logits under every precision policy: the domain BCE is computed from them.
    out = layers.Dense(1, name="logit", dtype="float32")(x)
    return keras.Model(inp, out, name=name)


def build_zs_sbir_models(
    backbone: str = "densenet121",
    image_size: int = 224,
    *,
    shared: bool = False,
    photo_input: str = "photo",
    domain_hidden: int = 1024,
    domain_layers: int = 4,
    domain_bn_momentum: float = 0.99,
    domain_bn_epsilon: float = 1e-3,
    **tower_kwargs: Any,
) -> dict[str, keras.Model]:
    """All models of the family.

    Args:
      backbone, image_size: of every tower (`build_tower`).
      shared: one tower for both domains.
      photo_input: `towers.PHOTO_INPUTS`, for the photo tower only (needs `shared=False`
        unless it is "photo").
      domain_*: `build_domain_classifier`'s hidden, num_layers, bn_momentum, bn_epsilon.
      **tower_kwargs: the other `build_tower` arguments (projection_dim, normalize,
        backbone_kwargs, freeze_trunk, edge_kwargs), the same for every tower.

    Returns:
      {"sketch_tower", "photo_tower", "domain_classifier"} when `shared` is False, else
      {"tower", "domain_classifier"} (one tower for both domains, stored once). Use
      `sketch_tower(models)` / `photo_tower(models)` to get the towers in either case.
    """

    if shared and photo_input != "photo":
        raise ValueError(
            f"photo_input={photo_input!r} needs separate towers (shared=False): the sketch "
            "tower must not turn sketches into edge maps"
        )

    def tower(name, photo_input="photo"):
        return build_tower(backbone, image_size, photo_input=photo_input, name=name, **tower_kwargs)

    models = {"tower": tower("tower")} if shared else {
        "sketch_tower": tower("sketch_tower"),
        "photo_tower": tower("photo_tower", photo_input),
    }  # fmt: skip
    embed_dim = int(next(iter(models.values())).output.shape[-1])
    models["domain_classifier"] = build_domain_classifier(
        embed_dim,
        hidden=domain_hidden,
        num_layers=domain_layers,
        bn_momentum=domain_bn_momentum,
        bn_epsilon=domain_bn_epsilon,
    )
    return models


def domain_logits(
    classifier: keras.Model, embeddings, batches: str = "joint", training: bool = True
):
    """Domain classifier logits of several equally sized embedding batches.

    Args:
      classifier: the domain classifier ([B, E] -> [B, 1]).
      embeddings: list of K float32 [B, E] tensors (e.g. photo+, photo-, sketch).
      batches: "joint" runs the classifier once on their concatenation [K*B, E], so its
        BatchNorm normalises with statistics over all K batches (and updates its moving
        statistics once); "separate" runs it once per batch, in list order, so each batch is
        normalised with its own statistics (and the moving statistics are updated K times), as
        the original code's three calls.
      training: passed to the classifier (BatchNorm batch statistics when True).

    Returns:
      float32 [K, B] logits, row k for embeddings[k].
    """
    if batches not in DOMAIN_BATCHES:
        raise ValueError(f"batches must be one of {DOMAIN_BATCHES}, got {batches!r}")
    k = len(embeddings)
    if batches == "joint":
        out = classifier(ops.concatenate(list(embeddings), axis=0), training=training)
        return ops.reshape(out, (k, -1))
    rows = [ops.reshape(classifier(e, training=training), (-1,)) for e in embeddings]
    return ops.stack(rows, axis=0)


def sketch_tower(models: dict[str, keras.Model]) -> keras.Model:
    """The tower that embeds sketches (the shared tower when weights are shared)."""
    return models["sketch_tower"] if "sketch_tower" in models else models["tower"]


def photo_tower(models: dict[str, keras.Model]) -> keras.Model:
    """The tower that embeds photos (the shared tower when weights are shared)."""
    return models["photo_tower"] if "photo_tower" in models else models["tower"]


def grl_layer(models: dict[str, keras.Model]) -> GradientReversal:
    """The GradientReversal layer of the domain classifier."""
    return models["domain_classifier"].get_layer(GRL_LAYER_NAME)


def set_grl_lambda(models: dict[str, keras.Model], value: float) -> None:
    """Sets the GRL lambda (python float) of the domain classifier."""
    grl_layer(models).set_lambda(float(value))
