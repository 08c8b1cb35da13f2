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


def read_class_list(path_or_name) -> list[str]:
    """Class names of a split file (a path, or a name under data/splits, `.txt` optional)."""
    path = Path(path_or_name)
    if not path.is_file():
        name = path.name if path.suffix == ".txt" else f"{path.name}.txt"
        path = SPLITS_DIR / name
    if not path.is_file():
        raise ValueError(f"split file {path_or_name!r} not found (looked in {SPLITS_DIR})")
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
    """(seen, unseen) class names of a dataset given a split file.

    Raises:
      ValueError naming the split file and the unknown classes when it lists a class the
      dataset does not have.
    """
    classes = list(classes)
    unseen = read_class_list(unseen_file)
    unknown = [c for c in unseen if c not in classes]
    if unknown:
        raise ValueError(f"split {unseen_file}: classes {unknown} are not in the dataset")
    seen = [c for c in classes if c not in set(unseen)]
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


__all__ = ["read_class_list", "seen_unseen", "split_instances", "check_no_leakage"]
