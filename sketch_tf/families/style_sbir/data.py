"""Training data of style-aware SBIR: what a style-labelled record set holds (`StyleIndex`)
and the batches of style triplets with a sketch of the anchor's content
(`style_triplet_batches`).

Sampling works on (content, style) groups of gallery images; records come from the
per-(class, domain) streams of `sketch_tf.data.pipeline` (or, for training on cached trunk
features, only the images' cache keys) and are preprocessed by `pipeline.preprocess`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sketch_tf.data import cache, pipeline, schema, tfrecord
from sketch_tf.data.pipeline import AUTOTUNE, TRIPLET_OUTPUTS

#: `style_triplet_batches`: which images may be the style negative (always another style).
STYLE_NEGATIVE_RULES = ("same_content", "any")


class StyleIndex:
    """What a style-labelled record set holds, read in one pass (keys and labels only).

    Labels: `content` = the record's class id (its `content_id` must be that class or unset
    only for sketches); `style` = the index of the record's domain in `styles` (the gallery
    media, sorted), checked against the record's `style_id`, which must be set (>= 0) and be
    the same for every record of a domain.

    Attributes:
      dataset_dir: the record folder.
      manifest: its manifest.
      classes: content class names (the dataset's class list).
      styles: gallery style names (domains), sorted; style label = index here.
      sketch_domain: the domain of the sketch queries.
      groups: int64 [G, 2] (content, style) of every non-empty gallery group, sorted.
      group_keys: list of G int64 arrays, the cache keys of each group's images (shard order).
      sketch_keys: {content: int64 array of the keys of its sketches}.
      sketch_dir, sketch_manifest: where the sketches are (`dataset_dir` unless `sketch_dir`).
      sketch_class_of: {content: class id of its sketches in `sketch_dir`'s class list}.

    Args:
      sketch_dir: another record folder whose `sketch_domain` records are the sketches (e.g.
        rasterised Quick, Draw! drawings for a gallery without sketches), matched to the
        contents by class name; the sketches of `dataset_dir` are then ignored.
      sketch_class_names: {class name in `sketch_dir`: content name} for names that differ
        (Quick, Draw!'s "car" for BAM's "cars").
    """

    def __init__(
        self,
        dataset_dir,
        styles,
        sketch_domain="sketch",
        classes=None,
        sketch_dir=None,
        sketch_class_names=None,
    ):
        self.dataset_dir = str(dataset_dir)
        self.manifest = tfrecord.read_manifest(dataset_dir, kind=schema.KIND_LABELLED_IMAGE)
        names = list(self.manifest["classes"])
        self.classes = names
        self.styles = sorted(styles)
        self.sketch_domain = sketch_domain
        wanted = None
        if classes is not None:
            wanted = set(pipeline.check_classes(self.manifest, classes, [], self.dataset_dir))
        style_of = {s: i for i, s in enumerate(self.styles)}
        ds = tfrecord.record_dataset(dataset_dir, manifest=self.manifest).map(
            schema.parse_labelled_image, num_parallel_calls=AUTOTUNE
        )
        ds = ds.map(
            lambda r: (
                r[schema.DOMAIN],
                r[schema.CLASS_ID],
                r[schema.STYLE_ID],
                r[schema.CONTENT_ID],
                r[schema.INSTANCE_ID],
                cache.image_keys(r[schema.IMAGE]),
            ),  # fmt: skip
            num_parallel_calls=AUTOTUNE,
        ).batch(4096)
        groups: dict[tuple[int, int], list[int]] = {}
        sketches: dict[int, list[int]] = {}
        style_ids: dict[str, int] = {}
        for doms, cids, sids, conts, iids, keys in ds.as_numpy_iterator():
            for d, c, sid, cont, iid, k in zip(doms, cids, sids, conts, iids, keys, strict=True):
                d, c = d.decode(), int(c)
                if wanted is not None and c not in wanted:
                    continue
                if d == sketch_domain:
                    if sketch_dir is None:
                        sketches.setdefault(c, []).append(int(k))
                    continue
                if d not in style_of:
                    continue
                where = f"{self.dataset_dir}: record {iid.decode()!r} (domain {d!r})"
                if sid < 0 or cont < 0:
                    raise ValueError(
                        f"{where} has no style_id / content_id: style-aware SBIR needs "
                        "style-labelled records (prepare_data.py --source=style, "
                        "--source=synthetic --task=style, or --source=folders "
                        "--style_domains=...)"
                    )
                if cont != c:
                    raise ValueError(f"{where}: content_id {cont} differs from class_id {c}")
                if style_ids.setdefault(d, int(sid)) != sid:
                    raise ValueError(
                        f"{where}: style_id {sid}, but other {d!r} records have "
                        f"{style_ids[d]} (one style per domain expected)"
                    )
                groups.setdefault((c, style_of[d]), []).append(int(k))
        missing = [s for s in self.styles if s not in style_ids]
        if missing:
            raise ValueError(
                f"{self.dataset_dir}: no records of styles {missing} (has domains "
                f"{sorted(self.manifest['counts']['per_domain_class'])})"
            )
        self.sketch_dir = self.dataset_dir if sketch_dir is None else str(sketch_dir)
        if sketch_dir is None:
            self.sketch_manifest = self.manifest
            self.sketch_class_of = {c: c for c in sketches}
        else:
            self.sketch_manifest, self.sketch_class_of, sketches = _foreign_sketches(
                sketch_dir, sketch_domain, names, wanted, sketch_class_names
            )
        order = sorted(groups)
        self.groups = np.asarray(order, np.int64).reshape(-1, 2)
        self.group_keys = [np.asarray(groups[g], np.int64) for g in order]
        self.sketch_keys = {c: np.asarray(v, np.int64) for c, v in sorted(sketches.items())}

    def group_name(self, g: int) -> str:
        c, s = self.groups[g]
        return f"{self.classes[c]}/{self.styles[s]}"

    def triplet_tables(self, negative_rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Group-level sampling tables (never image combinations): (anchor logits [G],
        positive logits [G, G], negative logits [G, G]), 0 where allowed, -inf elsewhere.

        Positive group: the anchor's style, another content. Negative group: another style,
        and with `negative_rule="same_content"` the anchor's content.

        Raises:
          ValueError listing every group that cannot anchor a triplet and why.
        """
        if negative_rule not in STYLE_NEGATIVE_RULES:
            raise ValueError(
                f"negative_rule must be one of {STYLE_NEGATIVE_RULES}, got {negative_rule!r}"
            )
        c, s = self.groups[:, 0], self.groups[:, 1]
        pos = (s[:, None] == s[None, :]) & (c[:, None] != c[None, :])
        neg = s[:, None] != s[None, :]
        if negative_rule == "same_content":
            neg &= c[:, None] == c[None, :]
        has_sketch = np.array([len(self.sketch_keys.get(int(x), ())) > 0 for x in c], bool)
        problems = []
        for g in range(len(self.groups)):
            why = []
            if not pos[g].any():
                why.append(f"no other content class in style {self.styles[s[g]]!r} (positive)")
            if not neg[g].any():
                rule = " with the same content" if negative_rule == "same_content" else ""
                why.append(f"no other style{rule} (negative)")
            if not has_sketch[g]:
                why.append(f"no {self.sketch_domain!r} record of {self.classes[c[g]]!r}")
            if why:
                problems.append(f"{self.group_name(g)} ({len(self.group_keys[g])} images): "
                                + "; ".join(why))  # fmt: skip
        if problems or not len(self.groups):
            shown = "\n  ".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
            raise ValueError(
                f"{self.dataset_dir}: too few images to form style triplets "
                f"(rule {negative_rule!r}; {len(problems)} of {len(self.groups)} content x "
                f"style groups):\n  {shown or 'no style-labelled image'}"
            )
        as_logits = lambda m: np.where(m, 0.0, -np.inf).astype(np.float32)  # noqa: E731
        return np.zeros(len(self.groups), np.float32), as_logits(pos), as_logits(neg)


def sketch_classes_of(sketch_manifest, contents, wanted=None, sketch_class_names=None):
    """{content id: class id in a sketch dataset} for the sketch classes whose name (or alias
    in `sketch_class_names`) is a content name (`contents`, restricted to ids in `wanted`)."""
    aliases = dict(sketch_class_names or {})
    out = {}
    names = sketch_manifest["classes"]
    for sc, own in enumerate(names):
        name = aliases.get(own, own)
        if name in contents and (wanted is None or contents.index(name) in wanted):
            c = contents.index(name)
            if c in out:
                raise ValueError(
                    f"sketch classes {names[out[c]]!r} and {own!r} both map to content "
                    f"{name!r} (sketch_class_names {aliases})"
                )
            out[c] = sc
    return out


def _foreign_sketches(sketch_dir, sketch_domain, contents, wanted, sketch_class_names):
    """(manifest, {content: sketch class id}, {content: keys}) of the sketches of another
    record folder, matched to `contents` by name."""
    manifest = tfrecord.read_manifest(sketch_dir, kind=schema.KIND_LABELLED_IMAGE)
    class_of = sketch_classes_of(manifest, contents, wanted, sketch_class_names)
    if not class_of:
        raise ValueError(
            f"{sketch_dir}: no sketch class matches a content class (sketch classes "
            f"{manifest['classes'][:8]}..., contents {contents}); map names with "
            "sketch_class_names"
        )
    content_of = {sc: c for c, sc in class_of.items()}
    keys: dict[int, list[int]] = {}
    for (domain, cid), k in pipeline.keys_by_domain_class(sketch_dir, manifest).items():
        if domain == sketch_domain and cid in content_of:
            keys.setdefault(content_of[cid], []).extend(int(x) for x in k)
    return manifest, class_of, {c: np.asarray(v, np.int64) for c, v in sorted(keys.items())}


def _key_picker(key_lists: list[np.ndarray]):
    """A function (group index, seed) -> a key drawn uniformly from that group's keys."""
    counts = tf.constant([len(k) for k in key_lists], tf.int64)
    offsets = tf.constant(np.concatenate([[0], np.cumsum([len(k) for k in key_lists])[:-1]]),
                          tf.int64)  # fmt: skip
    flat = tf.constant(np.concatenate(key_lists) if key_lists else np.zeros([0], np.int64))

    def pick(g, seed):
        i = tf.random.stateless_uniform([], seed, 0, counts[g], dtype=tf.int64)
        return flat[offsets[g] + i]

    return pick


def style_triplet_batches(
    index: StyleIndex,
    batch_size: int,
    seed: int = 0,
    negative_rule: str = "same_content",
    output: str = "keys",
    image_size: int = 224,
    training: bool = False,
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """Endless batches for style-aware SBIR: per element a style triplet and a sketch.

    Element i (stateless seed ``[seed, i]``): an anchor image A of content c and style s (its
    group uniform over the (content, style) groups), a positive P of style s and another
    content, a negative N of another style (content c with `negative_rule="same_content"`,
    any content with "any"), and a sketch K of content c. Sampling works on the group tables
    of `StyleIndex.triplet_tables` and the groups' key lists, never on combinations of
    images; in "keys" mode an image is drawn uniformly (with replacement) from its group.

    Args:
      index: the records (`StyleIndex`).
      batch_size: GLOBAL batch size.
      output: "keys" (int64 cache keys only: for cached trunk features) or "images"
        (decoded, preprocessed images from per-group record streams, augmented when
        `training`).

    Returns:
      {"sketch", "anchor", "positive", "negative": [B, S, S, 3] float32} (or "<name>_key"
      [B] int64 with output="keys"), and [B] int64 labels "content_id", "style_id" (of A and
      K; P has style_id too), "positive_content_id", "negative_content_id",
      "negative_style_id".
    """
    if output not in TRIPLET_OUTPUTS:
        raise ValueError(f"output must be one of {TRIPLET_OUTPUTS}, got {output!r}")
    anchor_logits, pos_logits, neg_logits = index.triplet_tables(negative_rule)
    n_groups = len(index.groups)
    pos_t, neg_t = tf.constant(pos_logits), tf.constant(neg_logits)
    groups_t = tf.constant(index.groups)
    contents = sorted(index.sketch_keys)
    sketch_slot = np.full(len(index.classes), -1, np.int64)
    sketch_slot[contents] = np.arange(len(contents))
    sketch_slot_t = tf.constant(sketch_slot)

    def choose(s):
        s4 = tf.random.experimental.stateless_split(s, 4)
        a = tf.random.stateless_uniform([], s4[0], 0, n_groups, dtype=tf.int64)
        p = tf.random.stateless_categorical(pos_t[a][None], 1, s4[1], dtype=tf.int64)[0, 0]
        n = tf.random.stateless_categorical(neg_t[a][None], 1, s4[2], dtype=tf.int64)[0, 0]
        return a, p, n, s4[3]

    picks = pipeline.element_seeds(seed).map(choose)

    def labels(a, p, n):
        ga, gp, gn = groups_t[a], groups_t[p], groups_t[n]
        return {
            "content_id": ga[0], "style_id": ga[1], "positive_content_id": gp[0],
            "negative_content_id": gn[0], "negative_style_id": gn[1],
        }  # fmt: skip

    if output == "keys":
        gallery = _key_picker(index.group_keys)
        sketch = _key_picker([index.sketch_keys[c] for c in contents])

        def keys(a, p, n, s):
            s4 = tf.random.experimental.stateless_split(s, 4)
            return {
                "anchor_key": gallery(a, s4[0]), "positive_key": gallery(p, s4[1]),
                "negative_key": gallery(n, s4[2]),
                "sketch_key": sketch(sketch_slot_t[groups_t[a][0]], s4[3]), **labels(a, p, n),
            }  # fmt: skip

        ds = picks.map(keys, num_parallel_calls=AUTOTUNE)
        return pipeline.batched(ds, batch_size, drop_remainder=True)

    def group_streams(offset):
        return [
            pipeline.class_domain_stream(
                index.dataset_dir, index.manifest, int(c), index.styles[int(st)],
                pipeline.stream_seed(seed, offset, g), shuffle_buffer,
            )
            for g, (c, st) in enumerate(index.groups)
        ]  # fmt: skip

    sketch_streams = [
        pipeline.class_domain_stream(
            index.sketch_dir, index.sketch_manifest, index.sketch_class_of[c],
            index.sketch_domain, pipeline.stream_seed(seed, 53, i), shuffle_buffer,
        )
        for i, c in enumerate(contents)
    ]  # fmt: skip
    a_ds = tf.data.Dataset.choose_from_datasets(group_streams(11), picks.map(lambda a, p, n, s: a))
    p_ds = tf.data.Dataset.choose_from_datasets(group_streams(23), picks.map(lambda a, p, n, s: p))
    n_ds = tf.data.Dataset.choose_from_datasets(group_streams(37), picks.map(lambda a, p, n, s: n))
    k_ds = tf.data.Dataset.choose_from_datasets(
        sketch_streams, picks.map(lambda a, p, n, s: sketch_slot_t[groups_t[a][0]])
    )

    def prep(k_rec, a_rec, p_rec, n_rec, pick):
        a, p, n, s = pick
        s4 = tf.random.experimental.stateless_split(s, 4)
        out = labels(a, p, n)
        for i, (name, rec) in enumerate(
            (("sketch", k_rec), ("anchor", a_rec), ("positive", p_rec), ("negative", n_rec))
        ):
            image = schema.parse_labelled_image(rec)[schema.IMAGE]
            out[name] = pipeline.preprocess(image, name == "sketch", image_size, training, s4[i])
        return out

    ds = tf.data.Dataset.zip((k_ds, a_ds, p_ds, n_ds, picks)).map(prep, num_parallel_calls=AUTOTUNE)
    return pipeline.batched(ds, batch_size, drop_remainder=True)
