"""The model families, and the registry of tasks.

Each family is a sub-package with the same modules:

- `config.py`: the complete defaults (`defaults()`) beside their checks (`validate()`);
- `task.py`: the Task (models, training data, losses), which hands out the objects of the
  next two;
- `evaluate.py`: an Evaluator class (metrics, tables and pictures on held-out data);
- `serving.py`: a Serving class (SavedModel signatures and their warmup inputs) and, for the
  retrieval families, a Retrieval class (gallery and query embeddings);
- `data.py` where the family samples its own training batches (zooms also has `match.py`, the
  two-sketch matching of `match.py`).

`FAMILIES` is the family list: name -> a function importing its Task class (a plain import,
done on first use so that importing this package stays cheap). Generic code finds tasks
through `get_task_class`, `known_task_names` and `family_names`, never by a family's name;
tasks registered at run time (`sketch_tf.train.tasks.register_task`) are found too. Keras
models live in `sketch_tf.models`, configs in `configs/<family>.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sketch_tf.train.tasks import Task


def _fg_sbir() -> type[Task]:
    from sketch_tf.families.fg_sbir.task import FgSbirTask

    return FgSbirTask


def _style_sbir() -> type[Task]:
    from sketch_tf.families.style_sbir.task import StyleSbirTask

    return StyleSbirTask


def _zooms() -> type[Task]:
    from sketch_tf.families.zooms.task import ZoomsTask

    return ZoomsTask


def _zs_sbir() -> type[Task]:
    from sketch_tf.families.zs_sbir.task import ZsSbirTask

    return ZsSbirTask


#: family name (= its sub-package and `config.task`) -> its Task class, imported when called.
FAMILIES: dict[str, Callable[[], type[Task]]] = {
    "fg_sbir": _fg_sbir,
    "style_sbir": _style_sbir,
    "zooms": _zooms,
    "zs_sbir": _zs_sbir,
}


def family_names() -> list[str]:
    """Names of the model families shipped with sketch_tf, sorted. Cheap: nothing is
    imported."""
    return sorted(FAMILIES)


def get_task_class(name: str) -> type[Task]:
    """The Task class of `name`: a task registered at run time (`register_task`) or a family
    (its package is imported on first use). KeyError naming the known tasks otherwise."""
    from sketch_tf.train.tasks import TASKS  # noqa: PLC0415 - TensorFlow only when needed

    if name in TASKS:
        return TASKS[name]
    if name in FAMILIES:
        return FAMILIES[name]()
    raise KeyError(f"unknown task {name!r}; known tasks: {known_task_names()}")


def known_task_names() -> list[str]:
    """Every task name: the shipped families and anything registered at run time."""
    from sketch_tf.train.tasks import TASKS  # noqa: PLC0415 - TensorFlow only when needed

    return sorted(set(TASKS) | set(FAMILIES))
