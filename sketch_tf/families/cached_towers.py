"""Frozen-trunk feature caches and heads of a task's towers, shared by the families whose
towers are `sketch_tf.models.towers.build_tower` towers (zs_sbir, style_sbir).

With a frozen trunk (`trunk_is_frozen`), a tower is `head(trunk(image))`: the trunk's features
are computed once per image and cached beside the records (`sketch_tf.data.cache`), and
training and evaluation run only the head on them. `CachedTowers` builds each cache and each
head once per task (a tower's id is its key, and the memo keeps the tower alive so that the id
is never reused); a cache is memoised by the images it covers (records folder, domains,
classes), so that evaluation and an export's gallery of the same images share one load.
This module is not a family (the registry lists sub-packages only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from sketch_tf.data import cache, pipeline
from sketch_tf.models.towers import tower_head, tower_trunk, trunk_is_frozen


class CachedTowers:
    """Feature caches (`features`) and heads (`head`) of one task's towers, built once.

    Args:
      family: the task name; prefixes the cache entry names and the error messages.
      freeze_key: the config key that freezes the trunks, named when a trunk is trainable.
    """

    def __init__(self, family: str, freeze_key: str):
        self.family = family
        self.freeze_key = freeze_key
        self._caches: dict[tuple, tuple[Any, cache.FeatureCache]] = {}
        self._heads: dict[int, tuple[Any, Any]] = {}

    def features(
        self,
        towers: dict[str, Any],
        *,
        records_dir: str,
        domains: Sequence[str],
        classes: Sequence[str] | None,
        cache_dir: str,
        specs: dict[str, dict[str, Any]],
        is_sketch: bool,
        image_size: int,
        batch_size: int,
        log: Callable[[str], None] = print,
    ) -> dict[str, cache.FeatureCache]:
        """The caches of the trunks of `towers` over the images of `domains` and `classes` in
        the records folder `records_dir` (computed on first use, those missing in one pass:
        `cache.cached_feature_entries`, which runs the layers the trunks share, e.g. the
        common blocks of one frozen backbone, once per image). Memoised by (entry folder,
        domains, classes, role, tower): a second call over the same images (evaluation's
        test images, then the export's default gallery of them) reads nothing again.

        Args:
          towers: {role: tower}; a role says what the tower embeds here ("sketch", "photo",
            "style", ...) and its entry is
            `<records_dir or cache_dir>/cache/<family>_<role>_features-<digest>/`.
          domains, classes: which records of the folder (`pipeline.labelled_image_bytes`);
            classes are names, None = every class.
          specs: {role: what besides the weights determines its features (backbone and its
            arguments, ...)}; `task`, `role` and `image_size` are added.
          is_sketch, image_size: the evaluation preprocessing of the images.

        Returns:
          {role: `cache.FeatureCache`} for every role of `towers`.

        Raises:
          ValueError: a tower's trunk has trainable weights.
        """
        root = cache.cache_root(records_dir, cache_dir)
        which = (  # the images (folder, domains, classes) and where their entries live
            os.path.abspath(records_dir),
            os.path.abspath(root),
            tuple(sorted(domains)),
            None if classes is None else tuple(sorted(classes)),
        )
        todo = {r: t for r, t in towers.items() if (which, r, id(t)) not in self._caches}
        for tower in todo.values():
            if not trunk_is_frozen(tower):
                raise ValueError(
                    f"{self.family}: data.feature_cache: the {tower.name} trunk has trainable "
                    f"weights; set {self.freeze_key}=True"
                )
        entries = [
            cache.CacheEntry(
                f"{self.family}_{role}_features",
                {"task": self.family, "role": role, "image_size": int(image_size), **specs[role]},
                tower_trunk(tower),
            )
            for role, tower in todo.items()
        ]
        if entries:
            wanted = None if classes is None else list(classes)
            images = pipeline.labelled_image_bytes(records_dir, list(domains), wanted)
            built = cache.cached_feature_entries(
                root,
                entries,
                images,
                lambda e: pipeline.preprocess(e, is_sketch, int(image_size), False),
                batch_size=int(batch_size),
                log=log,
            )
            for (role, tower), entry in zip(todo.items(), built, strict=True):
                self._caches[(which, role, id(tower))] = (tower, entry)
        return {r: self._caches[(which, r, id(t))][1] for r, t in towers.items()}

    def head(self, tower):
        """`tower_head(tower)` (features -> embedding), built once per tower."""
        if id(tower) not in self._heads:
            self._heads[id(tower)] = (tower, tower_head(tower))
        return self._heads[id(tower)][1]


def cache_problems(config, frozen: dict[str, bool]) -> list[str]:
    """Problems of `data.feature_cache=True` in `config`: every trunk must be frozen
    (`frozen`: config key -> its value, e.g. {"model.freeze_trunk": False}) and
    `data.train_augment` off. Empty when the cache is off or the config fits it."""
    d = config.data
    if not d.feature_cache:
        return []
    problems = [
        f"data.feature_cache=True needs {key}=True (only a frozen trunk's features can be cached)"
        for key, value in frozen.items()
        if not value
    ]
    if d.train_augment:
        problems.append(
            "data.feature_cache=True needs data.train_augment=False (the cached features are "
            "those of the un-augmented images)"
        )
    return problems


def precompute(task, models, log: Callable[[str], None] = print) -> dict[str, str]:
    """`Task.precompute` of a task with `uses_feature_cache()` and `feature_caches(models,
    which, log)`: builds (or checks) the train and test caches; {"<which>/<role>": folder}."""
    if not task.uses_feature_cache():
        return {}
    return {
        f"{which}/{role}": entry.path
        for which in ("train", "test")
        for role, entry in task.feature_caches(models, which, log).items()
    }


__all__ = ["CachedTowers", "cache_problems", "precompute"]
