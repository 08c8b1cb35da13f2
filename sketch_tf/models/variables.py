"""The variables of a dict of Keras models, each once: what a checkpoint, a SavedModel or an
optimizer holds (used by train/ and export/, hence here, below both)."""

from __future__ import annotations

from typing import Any


def unique_variables(models: dict[str, Any], attr: str = "variables") -> list:
    """`getattr(model, attr)` of every model (models in name order), each variable once.

    `attr="variables"`: every variable incl. non-trainable statistics and RNG seed states
    (what checkpoints and SavedModels must hold); `"trainable_variables"`: what an optimizer
    updates. Models may share layers (a shared tower), hence the de-duplication.
    """
    seen, out = set(), []
    for name in sorted(models):
        for v in getattr(models[name], attr):
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out
