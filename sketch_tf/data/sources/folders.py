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

import os
import re
from pathlib import Path

from sketch_tf.data import schema
from sketch_tf.data.sources.common import (
    WriteOptions,
    class_index,
    is_held_out,
    list_images,
    open_dataset,
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


def prepare(
    root,
    out_dir,
    layout: str = "auto",
    domain: str = "sketch",
    domains=None,
    tx_dir: str | None = None,
    skip_bad: bool = False,
    allow_missing: bool = False,
    verify_images: bool = True,
    shard_bytes: int = 128 << 20,
    group_by: str = "domain_class",
    overwrite: bool = False,
    max_per_class: int | None = None,
    style_domains=None,
    test_fraction: float = 0.0,
) -> dict:
    """Convert an image folder tree into a `labelled_image` dataset.

    With `test_fraction` > 0 two datasets are written, `<out_dir>/train` and `<out_dir>/test`:
    an image is held out when a stable hash of its (class, instance id) falls below the
    fraction (so a Sketchy photo and its sketches, which share an instance id, stay together).

    Args:
      root: dataset root (see module docstring for layouts).
      out_dir: output dataset folder (written atomically).
      layout: "auto", "domain_class" or "class".
      domain: domain name given to every image of the `class` layout.
      domains: only these domain folders (default: all).
      tx_dir: Sketchy variant folder inside a domain (default `tx_000000000000`).
      skip_bad: skip unreadable/corrupt images (recorded in the manifest) instead of failing.
      allow_missing: allow a class that is absent from some domain (default: error, since
        cross-domain triplets need every class in every domain).
      verify_images: fully decode every image while preparing.
      max_per_class: keep at most this many images per (domain, class), first by name.
      style_domains: domains whose images get style labels (`style_id` = index of the domain
        in this list sorted, `content_id` = class id): the gallery media of style-aware SBIR,
        e.g. PACS's art_painting, cartoon, photo. Other domains keep -1.
      test_fraction: in [0, 1): share of instances written to `<out_dir>/test` (0 = one
        dataset in `out_dir`).

    Returns:
      the manifest dict (with test_fraction > 0: {"train": manifest, "test": manifest}).

    Raises:
      ValueError on an empty class folder or a class missing in a domain; BadInputError naming
      the file on a bad image (unless `skip_bad`).
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
    ids = class_index(all_classes)
    root = Path(root)
    styles = sorted(style_domains or ())
    unknown = sorted(set(styles) - set(tree))
    if unknown:
        raise ValueError(f"{root}: style_domains {unknown} are not domains here ({sorted(tree)})")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    opts = WriteOptions(skip_bad, shard_bytes, group_by, overwrite)
    parts = {"": None} if not test_fraction else {"train": False, "test": True}
    manifests = {}
    for part, held_out in parts.items():
        target = os.path.join(out_dir, part) if part else out_dir
        with open_dataset(target, KIND, all_classes, "folders", root, opts) as (writer, policy):
            for d in sorted(tree):
                for c in sorted(tree[d]):
                    files = tree[d][c][:max_per_class] if max_per_class else tree[d][c]
                    for path in files:
                        inst = instance_of(path)
                        if held_out is not None and is_held_out(c, inst, test_fraction) != held_out:
                            continue
                        image = policy.load_image(path, verify=verify_images)
                        if image is None:
                            continue
                        rel = os.path.relpath(path, root)
                        labels = {}
                        if d in styles:
                            labels = {"style_id": styles.index(d), "content_id": ids[c]}
                        rec = schema.encode_labelled_image(image, ids[c], c, d, inst, rel, **labels)
                        writer.write(rec, class_id=ids[c], class_name=c, domain=d)
            writer.info.update(layout=layout, tx_dir=tx_dir, max_per_class=max_per_class)
            if styles:
                writer.info["styles"] = styles
            if held_out is not None:
                writer.info.update(split=part, test_fraction=float(test_fraction))
        manifests[part] = writer.manifest
    return manifests[""] if "" in manifests else manifests
