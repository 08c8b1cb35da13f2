"""Seen / unseen class splits, train / test by instance, and a train-test leakage check.

Split files live in `data/splits/*.txt`: one class name per line, `#` starts a comment.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from pathlib import Path

from sketch_tf.data import schema, tfrecord
from sketch_tf.paths import PROJECT_ROOT

SPLITS_DIR = PROJECT_ROOT / "data" / "splits"


def resolve_class_file(path_or_name) -> Path | None:
    """The split file meant by `path_or_name`: the path as given (relative to the working
    directory), else relative to the project root, else a name under data/splits (`.txt`
    optional). None when none exists."""
    path = Path(path_or_name)
    name = path.name if path.suffix == ".txt" else f"{path.name}.txt"
    for candidate in (path, PROJECT_ROOT / path, SPLITS_DIR / name):
        if candidate.is_file():
            return candidate
    return None


def read_class_list(path_or_name) -> list[str]:
    """Class names of a split file (see `resolve_class_file`); `#` starts a comment."""
    path = resolve_class_file(path_or_name)
    if path is None:
        raise ValueError(
            f"split file {path_or_name!r} not found (one class name per line; looked in the "
            f"working directory, {PROJECT_ROOT} and {SPLITS_DIR})"
        )
    names = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line in names:
            raise ValueError(f"{path}:{line_no}: class {line!r} listed twice")
        names.append(line)
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def seen_unseen(classes: Iterable[str], unseen_file) -> tuple[list[str], list[str]]:
    """(seen, unseen) class names of a dataset given a split file (`class_split` with
    `unseen_file`).

    Raises:
      ValueError naming the split file and the unknown classes when it lists a class the
      dataset does not have.
    """
    return class_split(classes, unseen_file=str(unseen_file), where=f"split {unseen_file}")


def class_split(
    classes: Iterable[str],
    unseen: Iterable[str] = (),
    unseen_file: str = "",
    seen: Iterable[str] = (),
    where: str = "data",
) -> tuple[list[str], list[str]]:
    """(seen, unseen) class names of a dataset from the config keys of every family:
    `data.unseen_classes` (names), or `data.unseen_classes_file` (a split file, wins when
    set), and optionally `data.seen_classes` (default: every class not unseen).

    Args:
      classes: the dataset's class names (its manifest's order).
      where: prefix of error messages (e.g. the family name).

    Raises:
      ValueError naming the classes (and the split file) that the dataset does not have.
    """
    classes = list(classes)
    unseen = read_class_list(unseen_file) if unseen_file else list(unseen)
    seen = list(seen) or [c for c in classes if c not in set(unseen)]
    missing = [c for c in seen + unseen if c not in classes]
    if missing:
        source = f" (split file {unseen_file})" if unseen_file else ""
        raise ValueError(
            f"{where}: classes {missing} are not in the dataset (it has {classes}; they come "
            f"from the seen/unseen split{source})"
        )
    return seen, unseen


def split_instances(instances: Iterable[str], test_fraction: float, seed: int = 0):
    """Split instance ids into (train, test) sets; all images of an instance go together."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    uniq = sorted(set(instances))
    random.Random(seed).shuffle(uniq)
    n_test = max(1, int(round(len(uniq) * test_fraction))) if len(uniq) > 1 else 0
    return set(uniq[n_test:]), set(uniq[:n_test])


def content_hashes(dataset_dir, instance_filter=None) -> dict[str, str]:
    """sha256 of every image's encoded bytes -> its source path (streams the dataset)."""
    out = {}
    for rec in tfrecord.record_dataset(dataset_dir):
        r = schema.parse_labelled_image(rec)
        if instance_filter is not None and not instance_filter(r[schema.INSTANCE_ID].numpy()):
            continue
        out[hashlib.sha256(r[schema.IMAGE].numpy()).hexdigest()] = r[schema.SOURCE].numpy().decode()
    return out


def check_no_leakage(train_dir, test_dir) -> None:
    """Fail when an image (same encoded bytes) is in both datasets, naming both sources."""
    train = content_hashes(train_dir)
    test = content_hashes(test_dir)
    both = sorted(set(train) & set(test))
    if both:
        pairs = [(train[h], test[h]) for h in both[:5]]
        raise ValueError(f"{len(both)} images are in both train and test, e.g. {pairs}")


__all__ = [
    "check_no_leakage",
    "class_split",
    "read_class_list",
    "resolve_class_file",
    "seen_unseen",
    "split_instances",
]
