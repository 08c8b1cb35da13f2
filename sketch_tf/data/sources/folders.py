"""Image folder layouts -> `labelled_image` records.

Layouts (picked by `layout=`, or detected with "auto"):

- `domain_class`: `<root>/<domain>/<class>/<image>` (PACS; Sketchy with `sketch/` and `photo/`;
  Sketchy extended photos as a domain folder). A domain folder that holds only `tx_*`
  sub-folders (Sketchy's augmentation variants) is read from `tx_dir` (default
  `tx_000000000000`, the un-augmented one).
- `class`: `<root>/<class>/<image>`, all images of domain `domain` (TU-Berlin `png/`, a single
  Sketchy domain folder).

Instance ids: the file stem with a trailing `-<n>` removed, so Sketchy's sketch
`n02103406_4068-1.png` and its photo `n02103406_4068.jpg` share instance `n02103406_4068`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import NamedTuple

from sketch_tf.data import schema
from sketch_tf.data.sources.common import (
    Converted,
    SourcePlan,
    is_held_out,
    list_images,
    load_image_bytes,
    plan_and_write,
    subdirs,
)

#: Record kind this source writes.
KIND = schema.KIND_LABELLED_IMAGE
LAYOUTS = ("auto", "domain_class", "class")
_SKETCH_SUFFIX = re.compile(r"-\d+$")


def instance_of(path: Path) -> str:
    """Instance id of an image file (stem without a trailing `-<n>`)."""
    return _SKETCH_SUFFIX.sub("", path.stem)


def _resolve_tx(domain_dir: Path, tx_dir: str) -> Path:
    subs = subdirs(domain_dir)
    if subs and all(s.name.startswith("tx_") for s in subs):
        chosen = domain_dir / tx_dir
        if not chosen.is_dir():
            raise ValueError(
                f"{domain_dir} holds Sketchy tx_* folders but not {tx_dir!r} "
                f"(have {[s.name for s in subs]}); pass tx_dir="
            )
        return chosen
    return domain_dir


def _detect(root: Path) -> str:
    subs = subdirs(root)
    if not subs:
        raise ValueError(f"{root}: no sub-folders; expected <domain>/<class>/ or <class>/")
    # class layout: sub-folders hold images; domain layout: sub-folders hold folders
    if any(list_images(s) for s in subs):
        return "class"
    return "domain_class"


def scan(root, layout: str = "auto", domain: str = "sketch", domains=None, tx_dir=None):
    """List (domain, class, path) of every image under `root`.

    Returns:
      (layout, {domain: {class: [paths]}}) with classes and files sorted.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder source root {root} is not a directory")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    tx_dir = tx_dir or "tx_000000000000"
    if layout == "auto":
        layout = "class" if subdirs(root) and _resolve_tx(root, tx_dir) != root else _detect(root)
    tree: dict[str, dict[str, list[Path]]] = {}
    if layout == "class":
        base = _resolve_tx(root, tx_dir)
        tree[domain] = {c.name: list_images(c) for c in subdirs(base)}
    else:
        wanted = set(domains) if domains else None
        for d in subdirs(root):
            if wanted is not None and d.name not in wanted:
                continue
            base = _resolve_tx(d, tx_dir)
            tree[d.name] = {c.name: list_images(c) for c in subdirs(base)}
        if wanted is not None and set(tree) != wanted:
            raise ValueError(f"{root}: domains {sorted(wanted - set(tree))} not found")
    if not tree or not any(tree.values()):
        raise ValueError(f"{root}: no class folders found ({layout} layout)")
    return layout, tree


class ImageItem(NamedTuple):
    """One image file to convert.

    Attributes:
      order: (index in the sorted walk over domains, classes, files,): single-process order.
      part: "" (one dataset), "train" or "test" (with `test_fraction`).
      domain, class_name, instance: the record's labels; rel: path relative to the root.
      where: the file path (named by errors and skips).
    """

    order: tuple[int]
    part: str
    domain: str
    class_name: str
    instance: str
    rel: str
    where: str


@dataclasses.dataclass(frozen=True)
class FoldersPlan(SourcePlan):
    """The image files of a folder conversion and their labels (see `plan`)."""

    root: Path
    layout: str
    tree: dict
    classes: list[str]
    parts: tuple[str, ...]
    tx_dir: str | None = None
    verify_images: bool = True
    max_per_class: int | None = None
    styles: tuple[str, ...] = ()
    test_fraction: float = 0.0
    source: str = "folders"
    kind: str = KIND

    def units(self) -> list[ImageItem]:
        """Every image file kept (`max_per_class` applied), sorted by domain, class, name."""
        out = []
        for d in sorted(self.tree):
            for c in sorted(self.tree[d]):
                files = self.tree[d][c]
                for path in files[: self.max_per_class] if self.max_per_class else files:
                    inst = instance_of(path)
                    part = ""
                    if self.test_fraction:
                        held_out = is_held_out(c, inst, self.test_fraction)
                        part = "test" if held_out else "train"
                    rel = os.path.relpath(path, self.root)
                    out.append(ImageItem((len(out),), part, d, c, inst, rel, str(path)))
        return out

    def items(self, unit: ImageItem) -> list[ImageItem]:
        """A unit is one image: itself."""
        return [unit]

    def convert(self, item: ImageItem) -> Converted:
        """Read (and with `verify_images` fully decode) one image and encode its record.

        Raises:
          BadInputError naming the file when it is unreadable or not a decodable image.
        """
        image = load_image_bytes(item.where, verify=self.verify_images)
        class_id = self.classes.index(item.class_name)
        labels = {}
        if item.domain in self.styles:
            labels = {"style_id": self.styles.index(item.domain), "content_id": class_id}
        record = schema.encode_labelled_image(
            image, class_id, item.class_name, item.domain, item.instance, item.rel, **labels
        )
        return Converted(record, class_id, item.class_name, item.domain)

    def info(self, part: str) -> dict:
        info = {"layout": self.layout, "tx_dir": self.tx_dir, "max_per_class": self.max_per_class}
        if self.styles:
            info["styles"] = list(self.styles)
        if part:
            info.update(split=part, test_fraction=float(self.test_fraction))
        return info


#: `group_by` of `prepare` when not given (one shard stream per (domain, class)).
DEFAULT_GROUP_BY = "domain_class"


def plan(
    root,
    layout: str = "auto",
    domain: str = "sketch",
    domains=None,
    tx_dir: str | None = None,
    allow_missing: bool = False,
    verify_images: bool = True,
    max_per_class: int | None = None,
    style_domains=None,
    test_fraction: float = 0.0,
) -> FoldersPlan:
    """Scan and check the folder tree `prepare` converts.

    Args:
      root: dataset root (see module docstring for layouts).
      layout: "auto", "domain_class" or "class".
      domain: domain name given to every image of the `class` layout.
      domains: only these domain folders (default: all).
      tx_dir: Sketchy variant folder inside a domain (default `tx_000000000000`).
      allow_missing: allow a class that is absent from some domain (default: error, since
        cross-domain triplets need every class in every domain).
      verify_images: fully decode every image while preparing.
      max_per_class: keep at most this many images per (domain, class), first by name.
      style_domains: domains whose images get style labels (`style_id` = index of the domain
        in this list sorted, `content_id` = class id): the gallery media of style-aware SBIR,
        e.g. PACS's art_painting, cartoon, photo. Other domains keep -1.
      test_fraction: in [0, 1): share of instances written to `<out_dir>/test` (0 = one
        dataset in `out_dir`).

    Raises:
      ValueError on an empty class folder, a class missing in a domain, an unknown style
      domain or a `test_fraction` outside [0, 1).
    """
    layout, tree = scan(root, layout, domain, domains, tx_dir)
    all_classes = sorted({c for per in tree.values() for c in per})
    for d, per in tree.items():
        for c, files in per.items():
            if not files:
                raise ValueError(f"{Path(root)}: class folder {d}/{c} holds no image")
        missing = [c for c in all_classes if c not in per]
        if missing and not allow_missing:
            raise ValueError(
                f"{Path(root)}: classes {missing} missing in domain {d!r} "
                "(prepare_data.py --allow_missing accepts it; allow_missing=True in Python)"
            )
    root = Path(root)
    styles = sorted(style_domains or ())
    unknown = sorted(set(styles) - set(tree))
    if unknown:
        raise ValueError(f"{root}: style_domains {unknown} are not domains here ({sorted(tree)})")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    parts = ("",) if not test_fraction else ("train", "test")
    return FoldersPlan(
        root,
        layout,
        tree,
        all_classes,
        parts,
        tx_dir=tx_dir,
        verify_images=verify_images,
        max_per_class=max_per_class,
        styles=tuple(styles),
        test_fraction=test_fraction,
    )


def prepare(root, out_dir, **options) -> dict:
    """Convert an image folder tree into a `labelled_image` dataset.

    With `test_fraction` > 0 two datasets are written, `<out_dir>/train` and `<out_dir>/test`:
    an image is held out when a stable hash of its (class, instance id) falls below the
    fraction (so a Sketchy photo and its sketches, which share an instance id, stay together).

    Args:
      root: dataset root (see module docstring for layouts).
      out_dir: output dataset folder (written atomically).
      **options: the output options of `common.plan_and_write` (`skip_bad`: skip
        unreadable / corrupt images, recorded in the manifest, instead of failing;
        `shard_bytes`, `group_by`, `overwrite`) and what to read and how (`layout`,
        `domain`, `domains`, `tx_dir`, `allow_missing`, `verify_images`, `max_per_class`,
        `style_domains`, `test_fraction`): see `plan`.

    Returns:
      the manifest dict (with test_fraction > 0: {"train": manifest, "test": manifest}).

    Raises:
      ValueError on an empty class folder or a class missing in a domain; BadInputError naming
      the file on a bad image (unless `skip_bad`).
    """
    return plan_and_write(plan, root, out_dir, DEFAULT_GROUP_BY, **options)
