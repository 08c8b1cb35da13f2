"""QMUL fine-grained SBIR (Shoes V1 / Chairs V1, Yu et al., "Sketch Me That Shoe", CVPR 2016)
-> `labelled_image` records.

Layout (the authors' release with their TensorFlow code), one folder per category `<c>`:

```
<c>_sketch_db_<split>.mat   key `data`: uint8 [N, H, W] (black lines on white), sketch i
<c>_edge_db_<split>.mat     key `data`: uint8 [N, H, W], the edge map of object i (the gallery
                            side of the original protocol)
<c>_image_db_<split>.mat    optional, key `data`: uint8 [N, H, W, 3] RGB or [N, H, W] grey
                            photos of object i
<c>_annotation.json         optional: {"<split>": {"images": [N names], "sketches": [N names],
                            "triplets": [per sketch i: [[closer, farther], ...]]}, ...}
```

Row i of every file is the same object, so one object gives one record per domain ("sketch",
"edge", "photo"), all with `instance_id = f"{i:05d}"` (the object's index in the split's files)
and `source = "<file name>[i]"`. A triplet pair `[closer, farther]` of sketch i says humans
judged object `closer` more like the sketch than object `farther` (0-based indices into the
same split); sketch records carry them as `preference_pairs` (`schema.PREFERENCE_PAIRS`).

The release has a train and a test split. The train split is carved into `train/` and `val/`
by object with a fixed seed; pairs that name an object of the other part are dropped, so a
part never refers to objects it does not hold. Everything is read and checked before anything
is written, and the parts of one call appear together or not at all (`prepare`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sketch_tf.core.png import encode_png
from sketch_tf.data import schema
from sketch_tf.data.sources.common import (
    BadInputError,
    Converted,
    SourcePlan,
    WriteOptions,
    write_plan,
)
from sketch_tf.data.tfrecord import GROUP_BY, DatasetError

#: Record kind this source writes.
KIND = schema.KIND_LABELLED_IMAGE
SPLITS = ("train", "test")
#: Record domain -> the file kind it is read from (`<c>_<kind>_db_<split>.mat`).
DOMAIN_FILES = {"sketch": "sketch", "edge": "edge", "photo": "image"}
_HDF5 = b"\x89HDF\r\n\x1a\n"


def db_name(category: str, kind: str, split: str) -> str:
    """File name of one QMUL array file, e.g. `shoes_sketch_db_train.mat`."""
    return f"{category}_{kind}_db_{split}.mat"


def annotation_name(category: str) -> str:
    """File name of a category's triplet annotation, e.g. `shoes_annotation.json`."""
    return f"{category}_annotation.json"


def find_category_folder(root, category: str | None, split: str) -> tuple[Path, str]:
    """The folder holding a category's files, and the category.

    Args:
      root: the category folder itself, or its parent (`<root>/<category>/`).
      category: file prefix ("shoes", "chairs"); None = the one category whose
        `*_sketch_db_<split>.mat` is found in `root` or its sub-folders.

    Returns:
      (folder, category).

    Raises:
      ValueError when `root` is not a folder or several categories are found;
      BadInputError naming the expected path when the sketch db is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"qmul: root {root} is not a folder")
    if category is None:
        pattern = f"*_sketch_db_{split}.mat"
        found = sorted(root.glob(pattern)) + sorted(root.glob(f"*/{pattern}"))
        if len(found) != 1:
            if not found:
                raise BadInputError(
                    f"{root}: no {pattern} in it or in its sub-folders (expected the QMUL "
                    f"sketch db of split {split!r}, e.g. shoes/{db_name('shoes', 'sketch', split)})"
                )
            raise ValueError(
                f"qmul: {root}: {len(found)} sketch dbs of split {split!r} found "
                f"({[str(p.relative_to(root)) for p in found]}); pass category= (--category)"
            )
        name = found[0].name
        return found[0].parent, name[: -len(f"_sketch_db_{split}.mat")]
    if not category or "/" in category or category.startswith("."):
        raise ValueError(f"qmul: category must be a file prefix such as 'shoes', got {category!r}")
    name = db_name(category, "sketch", split)
    for folder in (root, root / category):
        if (folder / name).is_file():
            return folder, category
    raise BadInputError(
        f"{root / name}: missing (the QMUL {category} sketch db of split {split!r}; looked in "
        f"{root} and {root / category})"
    )


def read_db(path: Path) -> np.ndarray:
    """The `data` array of one QMUL `.mat` file: uint8 [N, H, W] or [N, H, W, 3], N > 0.

    Raises:
      BadInputError naming the file when it is not a MATLAB file scipy can read (a v7.3 /
      HDF5 file included), has no `data` variable, or holds a non-uint8 / wrongly shaped one.
    """
    import scipy.io

    with open(path, "rb") as f:
        head = f.read(520)
    # v7.3 MAT-files are HDF5 files behind a 512-byte MATLAB text header.
    if head.startswith(b"MATLAB 7.3") or _HDF5 in (head[:8], head[512:520]):
        raise BadInputError(
            f"{path}: a MATLAB v7.3 (HDF5) file, which scipy.io.loadmat cannot read; re-save it "
            "as a v7 MAT-file: in MATLAB `load(file); save(file, 'data', '-v7')`, or in Python "
            "read it with h5py and write it with scipy.io.savemat"
        )
    try:
        keys = [name for name, _, _ in scipy.io.whosmat(str(path))]
        content = scipy.io.loadmat(str(path), variable_names=["data"])
    except NotImplementedError as e:  # scipy's answer to v7.3 files without the usual header
        raise BadInputError(
            f"{path}: a MATLAB v7.3 (HDF5) file, which scipy.io.loadmat cannot read ({e}); "
            "re-save it with save(file, 'data', '-v7')"
        ) from e
    except Exception as e:  # scipy raises ValueError, OSError, MatReadError, ... on bad bytes
        raise BadInputError(
            f"{path}: not a readable MATLAB (v5/v7) file ({type(e).__name__}: {e})"
        ) from e
    if "data" not in content:
        raise BadInputError(
            f"{path}: no variable 'data' (found {keys}); expected the QMUL uint8 array "
            "[N, H, W] or [N, H, W, 3] under the key 'data'"
        )
    data = content["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise BadInputError(f"{path}: 'data' holds {what}, expected uint8 pixels")
    rgb = data.ndim == 4 and data.shape[3] == 3
    if not (data.ndim == 3 or rgb) or min(data.shape) == 0:
        raise BadInputError(
            f"{path}: 'data' has shape {list(data.shape)}, expected [N, H, W] or [N, H, W, 3] "
            "with N > 0 objects"
        )
    return data


def read_triplets(path: Path, split: str, n: int) -> list[np.ndarray] | None:
    """Per sketch, its annotated (closer, farther) object pairs, int64 [P_i, 2].

    Returns:
      a list of N arrays, or None when the file has no `split` key (no judgements for it).

    Raises:
      BadInputError naming the file when it is not valid JSON, `split` is not an object with a
      `triplets` list of N lists of index pairs, a name list (`images`, `sketches`) does not
      have N entries, or an index is outside [0, N).
    """
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: not valid JSON ({e})") from e
    layout = (
        '{"<split>": {"images": [...], "sketches": [...], "triplets": [per sketch: '
        "[[closer, farther], ...]]}}"
    )
    if not isinstance(content, dict):
        raise BadInputError(f"{path}: expected a JSON object {layout}")
    if split not in content:
        return None
    entry = content[split]
    if not isinstance(entry, dict) or not isinstance(entry.get("triplets"), list):
        raise BadInputError(f"{path}: {split!r} must be an object with a 'triplets' list: {layout}")
    for key in ("triplets", "images", "sketches"):
        if key in entry and (not isinstance(entry[key], list) or len(entry[key]) != n):
            got = len(entry[key]) if isinstance(entry[key], list) else type(entry[key]).__name__
            raise BadInputError(
                f"{path}: {split}.{key} has {got} entries, but the .mat files hold N={n} objects"
            )
    out = []
    for i, pairs in enumerate(entry["triplets"]):
        ok = isinstance(pairs, list) and all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(j, int) and not isinstance(j, bool) for j in p)
            for p in pairs
        )
        if not ok:
            raise BadInputError(
                f"{path}: {split}.triplets[{i}] (sketch {i}) must be a list of [closer, farther] "
                f"integer pairs, got {str(pairs)[:80]}"
            )
        for p in pairs:
            if not (0 <= p[0] < n and 0 <= p[1] < n):
                raise BadInputError(
                    f"{path}: {split}.triplets[{i}] (sketch {i}) pair {p} names an object "
                    f"outside [0, N) with N={n}"
                )
        out.append(np.asarray(pairs, np.int64).reshape(-1, 2))
    return out


class ObjectItem(NamedTuple):
    """One object seen in one domain.

    Attributes:
      order: (domain index in `QmulPlan.domains`, object index): single-process order.
      part: "train", "val" or "test".
      domain: "sketch", "edge" or "photo". index: the object's row in the split's files.
      where: `<file name>[index]` (named by errors, and the record's `source`).
    """

    order: tuple[int, int]
    part: str
    domain: str
    index: int
    where: str


@dataclasses.dataclass(frozen=True)
class QmulPlan(SourcePlan):
    """One QMUL category and split, read and checked (see `plan`).

    Attributes:
      folder: the folder holding the files (manifest `info.root`).
      category: the one class. split: the files' split ("train" / "test").
      arrays: domain -> uint8 [N, H, W(, 3)] pixels. files: domain -> file name.
      object_part: str [N] part of each object.
      triplets: per sketch int64 [P_i, 2] (closer, farther) pairs, or None (no judgements).
      annotation_note: where the pairs come from, or why there are none.
      val_objects, val_seed, val_fraction: the validation carve (train split only).
    """

    root: Path
    category: str
    split: str
    arrays: dict
    files: dict
    object_part: np.ndarray
    triplets: list | None
    annotation_note: str
    parts: tuple[str, ...]
    val_objects: tuple[int, ...] = ()
    val_seed: int | None = None
    val_fraction: float | None = None
    source: str = "qmul"
    kind: str = KIND

    @property
    def classes(self) -> list[str]:
        return [self.category]

    @property
    def domains(self) -> list[str]:
        return [d for d in DOMAIN_FILES if d in self.arrays]

    def units(self) -> list[str]:
        """One unit per domain present ("sketch", "edge"[, "photo"])."""
        return self.domains

    def items(self, unit: str) -> list[ObjectItem]:
        """Every object of the split, seen in domain `unit`."""
        d = self.domains.index(unit)
        name = self.files[unit]
        return [
            ObjectItem((d, i), str(part), unit, i, f"{name}[{i}]")
            for i, part in enumerate(self.object_part)
        ]

    def part_pairs(self, index: int) -> np.ndarray:
        """int64 [P, 2] pairs of sketch `index` whose two objects are in its own part."""
        if self.triplets is None:
            return np.zeros([0, 2], np.int64)
        pairs = self.triplets[index]
        same = (self.object_part[pairs] == self.object_part[index]).all(axis=1)
        return pairs[same]

    def convert(self, item: ObjectItem) -> Converted:
        """PNG-encode one object's image of one domain (2-D arrays as grey "L")."""
        pairs = self.part_pairs(item.index) if item.domain == "sketch" else ()
        record = schema.encode_labelled_image(
            encode_png(self.arrays[item.domain][item.index]),
            0,
            self.category,
            item.domain,
            f"{item.index:05d}",
            item.where,
            preference_pairs=pairs,
        )
        return Converted(record, 0, self.category, item.domain)

    def info(self, part: str) -> dict:
        objects = np.flatnonzero(self.object_part == part)
        written = sum(len(self.part_pairs(i)) for i in objects)
        annotated = sum(len(self.triplets[i]) for i in objects) if self.triplets else 0
        return {
            "category": self.category,
            "split": self.split,
            "part": part,
            "num_objects": int(len(objects)),
            "files": {d: self.files[d] for d in self.domains},
            "val_fraction": self.val_fraction,
            "val_seed": self.val_seed,
            "val_objects": list(self.val_objects),
            "preference_pairs": {
                "from": self.annotation_note,
                "written": int(written),
                "dropped_other_part": int(annotated - written),
            },
        }


def plan(
    root,
    category: str | None = None,
    split: str = "train",
    val_fraction: float = 0.2,
    val_seed: int = 0,
) -> QmulPlan:
    """Find, read and check every file of one category and split (arguments as `prepare`).

    Raises:
      ValueError for bad arguments or an ambiguous root; BadInputError naming the file for
      a missing or unusable input (see `prepare`).
    """
    if split not in SPLITS:
        raise ValueError(f"qmul: split must be one of {SPLITS}, got {split!r}")
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"qmul: val_fraction must be in [0, 1), got {val_fraction}")
    folder, category = find_category_folder(root, category, split)
    arrays, files = {}, {}
    for domain, kind in DOMAIN_FILES.items():
        path = folder / db_name(category, kind, split)
        if not path.is_file():
            if domain == "photo":  # photos are optional: QMUL's gallery is the edge maps
                continue
            raise BadInputError(
                f"{path}: missing (the QMUL {category} {kind} db of split {split!r}, row i = "
                f"the object of {db_name(category, 'sketch', split)}[i])"
            )
        arrays[domain] = read_db(path)
        files[domain] = path.name
    n = len(arrays["sketch"])
    for domain in arrays:
        if len(arrays[domain]) != n:
            raise BadInputError(
                f"{folder / files[domain]}: holds {len(arrays[domain])} objects but "
                f"{folder / files['sketch']} holds {n} (row i of each must be the same object)"
            )
    annotation = folder / annotation_name(category)
    triplets = None
    if not annotation.is_file():
        note = f"none: no {annotation.name} beside the .mat files"
    else:
        triplets = read_triplets(annotation, split, n)
        note = annotation.name
        if triplets is None:
            note = f"none: {annotation.name} has no {split!r} key"

    object_part = np.full([n], "test" if split == "test" else "train", dtype=object)
    found = (folder, category, split, arrays, files)
    if split == "test":
        return QmulPlan(*found, object_part, triplets, note, ("test",))
    n_val = round(n * val_fraction)
    if val_fraction and not 0 < n_val < n:
        raise ValueError(
            f"qmul: val_fraction={val_fraction} of N={n} objects gives {n_val} validation "
            "objects; choose a fraction that leaves both parts non-empty, or 0 for no val/"
        )
    val = np.sort(np.random.default_rng(val_seed).permutation(n)[:n_val])
    object_part[val] = "val"
    return QmulPlan(
        *found,
        object_part,
        triplets,
        note,
        ("train", "val") if n_val else ("train",),
        val_objects=tuple(int(i) for i in val),
        val_seed=int(val_seed),
        val_fraction=val_fraction,
    )


def _commit(staging: Path, out_dir: Path, parts) -> None:
    """Moves the finished `staging/<part>` folders to `out_dir/<part>`, replacing old ones.

    The old parts are renamed aside first and deleted only once every new part is in place;
    if a rename fails, what was moved is moved back.
    """
    moved_aside: list[tuple[Path, Path]] = []
    moved_in: list[Path] = []
    try:
        for part in parts:
            target = out_dir / part
            if target.exists():
                aside = out_dir / f".{part}.old-{os.getpid()}"
                os.rename(target, aside)
                moved_aside.append((target, aside))
        for part in parts:
            os.rename(staging / part, out_dir / part)
            moved_in.append(out_dir / part)
    except BaseException:
        for path in moved_in:
            shutil.rmtree(path, ignore_errors=True)
        for target, aside in moved_aside:
            os.rename(aside, target)
        raise
    for _, aside in moved_aside:
        shutil.rmtree(aside, ignore_errors=True)


def prepare(
    root,
    out_dir,
    *,
    category: str | None = None,
    split: str = "train",
    val_fraction: float = 0.2,
    val_seed: int = 0,
    skip_bad: bool = False,
    shard_bytes: int = 64 << 20,
    group_by: str = "none",
    overwrite: bool = False,
) -> dict:
    """Convert one QMUL category and split into `labelled_image` datasets, one per part.

    Records per object i of the split: domain "sketch" (with its `preference_pairs`), "edge"
    and, when `<c>_image_db_<split>.mat` exists, "photo"; images PNG-encoded at the stored
    size (2-D arrays as grey), `instance_id = f"{i:05d}"`, class `category` (id 0).

    Parts: split "train" writes `<out_dir>/train` and `<out_dir>/val`: the objects
    `np.random.default_rng(val_seed).permutation(N)[:round(N * val_fraction)]` (Python's
    round) form val, the rest train (`val_fraction=0`: train only). Split "test" writes
    `<out_dir>/test`. `out_dir` itself may exist (e.g. holding train/ and val/ when test/ is
    added); a part folder may exist only with `overwrite`. The parts are written to a hidden
    folder in `out_dir` and moved into place together at the end: a failed call leaves no
    part behind and keeps the parts it would have replaced.

    Args:
      root: the category folder holding the files, or its parent (`<root>/<category>/`).
      out_dir: folder receiving the part folders.
      category: file prefix ("shoes", "chairs"); None = inferred when exactly one
        `*_sketch_db_<split>.mat` is in `root` or its sub-folders.
      split: "train" or "test", the files' split.
      val_fraction: in [0, 1), share of the train split's objects held out as val/.
      val_seed: seed of the val carve.
      skip_bad: accepted for the common options; nothing here is skippable (every check is
        about a whole file).
      shard_bytes, group_by, overwrite: as `tfrecord.ShardedWriter`.

    Returns:
      {part: manifest dict}; each manifest's `info` holds the category, split, part, files,
      the val carve (`val_objects`, `val_seed`, `val_fraction`) and the preference pairs
      written / dropped and where they come from.

    Raises:
      BadInputError naming the file, before anything is written, for: a missing sketch / edge
      db; a file that is not a MATLAB file scipy reads (v7.3 / HDF5 included); no `data`
      variable; a non-uint8 or wrongly shaped array; files with different object counts; an
      annotation json that is not valid JSON or lacks the layout; an annotation list whose
      length differs from N; a pair index outside [0, N).
      ValueError for bad arguments; DatasetError when a part folder exists without
      `overwrite`.
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    conversion = plan(root, category, split, val_fraction, val_seed)
    out_dir = Path(out_dir).expanduser().absolute()
    for part in conversion.parts:
        if (out_dir / part).exists() and not overwrite:
            raise DatasetError(f"output folder {out_dir / part} exists (pass overwrite=True)")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".qmul.tmp-", dir=out_dir))
    try:
        # The staged parts are new folders (overwrite=False); old parts are replaced only in
        # `_commit`, once every part is complete.
        options = WriteOptions(skip_bad, shard_bytes, group_by, False)
        manifests = write_plan(conversion, staging, options)
        _commit(staging, out_dir, conversion.parts)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return manifests
