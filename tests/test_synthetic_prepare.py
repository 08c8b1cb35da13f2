"""prepare_synthetic: determinism of the written records, layout and record contents."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sketch_tf.data import schema
from sketch_tf.data.synthetic import CATEGORIES, STYLES, prepare_synthetic

CATS = ["chair", "mug"]


def _shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tfrecord"))}


def _records(folder):
    files = sorted(str(p) for p in folder.glob("*.tfrecord"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


@pytest.fixture(scope="module")
def sbir(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    kw = dict(seed=5, image_size=48, n_per_category=3, categories=CATS)
    prepare_synthetic("zs_sbir", root / "a", **kw)
    prepare_synthetic("zs_sbir", root / "b", **kw)
    prepare_synthetic("zs_sbir", root / "c", **{**kw, "seed": 6})
    return root


def test_another_process_with_two_render_workers_writes_identical_bytes(sbir, tmp_path):
    # Another process (record serialisation must not depend on per-process hashing) whose
    # categories render in two spawned worker processes.
    code = (
        "from sketch_tf.data.synthetic import prepare_synthetic\n"
        "if __name__ == '__main__':\n"
        f"    prepare_synthetic('zs_sbir', {str(tmp_path / 'p')!r}, seed=5, image_size=48,"
        f" n_per_category=3, categories={CATS!r}, workers=2)\n"
    )
    script = tmp_path / "render.py"
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], check=True, timeout=300)
    for split in ("train", "test"):
        assert _shard_bytes(sbir / "a" / split) == _shard_bytes(tmp_path / "p" / split)
    assert (sbir / "a" / "contact_sheet.png").read_bytes() == (
        tmp_path / "p" / "contact_sheet.png"
    ).read_bytes()


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        prepare_synthetic("zs_sbir", tmp_path / "x", workers=0)


def test_same_seed_gives_identical_bytes(sbir):
    for split in ("train", "test"):
        a, b = _shard_bytes(sbir / "a" / split), _shard_bytes(sbir / "b" / split)
        assert a and a == b
        c = _shard_bytes(sbir / "c" / split)
        assert a != c  # another seed draws other shapes and views


def test_zs_sbir_layout_and_instance_split(sbir):
    man = json.loads((sbir / "a" / "train" / "manifest.json").read_text())
    assert man["kind"] == schema.KIND_LABELLED_IMAGE and man["classes"] == CATS
    assert man["domains"] == ["photo", "sketch"]
    # 3 instances -> 2 train + 1 test, one sketch and one photo each
    assert man["counts"]["per_class"] == {"chair": 4, "mug": 4}
    assert man["info"]["seed"] == 5 and man["info"]["instances"] == [0, 2]
    assert (sbir / "a" / "contact_sheet.png").is_file()
    train_ids, test_ids = set(), set()
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for rec in _records(sbir / "a" / split):
            ex = schema.parse_labelled_image(rec)
            img = tf.io.decode_png(ex["image"]).numpy()
            assert img.shape == (48, 48, 3)
            ids.add(ex["instance_id"].numpy().decode())
            if ex["domain"].numpy() == b"sketch":
                assert np.median(img) == 255  # white paper
    assert train_ids and test_ids and not train_ids & test_ids


def test_zooms_records_hold_visible_pairs(tmp_path):
    kw = dict(seed=1, image_size=96, n_per_category=3, categories=["chair"])
    man = prepare_synthetic("zooms", tmp_path / "z", test_pairs_per_category=3, **kw)
    assert man["train"]["kind"] == schema.KIND_CORRESPONDENCE_PAIR
    # 2 training instances: 2 pairs; the test split's 1 instance: 3 pairs (views of it alone).
    assert man["train"]["num_records"] == 2 and man["test"]["num_records"] == 3
    from sketch_tf.data.synthetic.prepare import stale_options

    assert stale_options(tmp_path / "z", "zooms", {**kw, "test_pairs_per_category": 3}) == {}
    assert stale_options(tmp_path / "z", "zooms", {**kw, "test_pairs_per_category": 2}) == {
        "test_pairs_per_category": (3, 2)
    }
    for rec in _records(tmp_path / "z" / "train"):
        ex = schema.parse_correspondence_pair(rec)
        pa, pb, ids = ex["points_a"].numpy(), ex["points_b"].numpy(), ex["point_ids"].numpy()
        assert len(ids) >= 8 and pa.shape == pb.shape == (len(ids), 2)
        assert (pa >= 0).all() and (pa < 96).all() and (pb >= 0).all() and (pb < 96).all()
        assert np.all(np.diff(ids) > 0)
        assert ex["instance_a"].numpy() != ex["instance_b"].numpy()


def test_style_task_domains(tmp_path):
    man = prepare_synthetic(
        "style", tmp_path / "s", seed=2, image_size=40, n_per_category=2, categories=CATS
    )
    assert man["train"]["domains"] == sorted(STYLES + ["sketch"])
    assert man["train"]["counts"]["per_domain"]["oilpaint"] == 2
    ex = schema.parse_labelled_image(_records(tmp_path / "s" / "train")[1])
    assert ex["style_id"].numpy() == 0 and ex["content_id"].numpy() == ex["class_id"].numpy()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        prepare_synthetic("sbir", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown categories"):
        prepare_synthetic("zs_sbir", tmp_path / "x", categories=["spaceship"])
    with pytest.raises(ValueError, match="n_per_category"):
        prepare_synthetic("zs_sbir", tmp_path / "x", n_per_category=1)
    assert len(CATEGORIES) >= 12


def test_stale_options_name_what_the_records_were_rendered_with(sbir, tmp_path):
    from sketch_tf.data.synthetic.prepare import stale_options

    kw = dict(seed=5, image_size=48, n_per_category=3, categories=CATS)
    assert stale_options(sbir / "a", "zs_sbir", kw) == {}
    # Every category asked (the default) against the two rendered.
    assert stale_options(sbir / "a", "zs_sbir", {**kw, "categories": None}) == {
        "categories": (CATS, list(CATEGORIES))
    }
    assert stale_options(tmp_path / "absent", "zs_sbir", kw) == {}
    assert stale_options(sbir / "c", "zs_sbir", {**kw, "n_per_category": 4}) == {
        "seed": (6, 5),
        "n_per_category": (3, 4),
    }
    assert stale_options(sbir / "a", "style", kw) == {"task": ("zs_sbir", "style")}
    # Records another tool wrote are never rendered over.
    other = tmp_path / "other" / "train"
    other.mkdir(parents=True)
    manifest = json.loads((sbir / "a" / "train" / "manifest.json").read_text())
    manifest["info"] = {"source": "folders"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="other/train/manifest.json: not records of the synth"):
        stale_options(tmp_path / "other", "zs_sbir", kw)


def test_ensure_synthetic_renders_what_is_missing_once_under_a_lock(tmp_path):
    import fcntl
    import shutil
    import threading

    from sketch_tf.data.synthetic.prepare import ensure_synthetic

    root, lines = tmp_path / "z", []
    kw = dict(seed=1, image_size=96, n_per_category=3, categories=["chair"])
    assert ensure_synthetic("zooms", root, workers=1, log=lines.append, **kw)
    first = {p.name: p.read_bytes() for p in (root / "test").iterdir()}
    assert not ensure_synthetic("zooms", root, workers=1, log=lines.append, **kw)  # there
    # Half there (an interrupted rendering: train written, test not, the test writer's
    # temporary folder left behind): rendered again, same bytes, the leftover removed.
    shutil.rmtree(root / "test")
    (root / ".test.tmp-killed").mkdir()
    assert ensure_synthetic("zooms", root, workers=1, log=lines.append, **kw)
    assert {p.name: p.read_bytes() for p in (root / "test").iterdir()} == first
    assert not (root / ".test.tmp-killed").exists()
    # Other options: rendered again over them, and said why.
    assert ensure_synthetic("zooms", root, workers=1, log=lines.append, **{**kw, "seed": 2})
    assert any("other options" in line and "'seed': (1, 2)" in line for line in lines)
    # While another process holds the lock, it waits (then finds the records there).
    with open(f"{root}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = []
        waiter = threading.Thread(
            target=lambda: done.append(
                ensure_synthetic("zooms", root, workers=1, **{**kw, "seed": 2})
            )
        )
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not done
    waiter.join(timeout=30)
    assert done == [False]
    # Records the synthetic world did not write are never rendered over.
    manifest = root / "train" / "manifest.json"
    info = json.loads(manifest.read_text())
    info["info"]["generator"] = "someone else"
    manifest.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="not records of the synthetic world"):
        ensure_synthetic("zooms", root, workers=1, **kw)
