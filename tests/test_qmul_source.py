"""Tests for sketch_tf.data.sources.qmul on hand-made QMUL files and on the shared train split."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import tensorflow as tf

from sketch_tf.data import schema, tfrecord
from sketch_tf.data.sources import SOURCES, BadInputError, prepare, qmul
from sketch_tf.paths import PROJECT_ROOT

N = 6


def _triplets(n=N):
    # Sketch i: its own object closer than the next one, and two other objects compared.
    return [[[i, (i + 1) % n], [(i + 2) % n, (i + 3) % n]] for i in range(n)]


def _qmul(folder, category="shoes", split="train", n=N, photo=None, annotation=True, seed=0):
    """Writes a tiny QMUL category folder; returns {domain: uint8 array} as written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "sketch": rng.integers(0, 256, [n, 16, 16], dtype=np.uint8),
        "edge": rng.integers(0, 256, [n, 16, 16], dtype=np.uint8),
    }
    if photo == "rgb":
        arrays["photo"] = rng.integers(0, 256, [n, 12, 14, 3], dtype=np.uint8)
    elif photo == "grey":
        arrays["photo"] = rng.integers(0, 256, [n, 12, 14], dtype=np.uint8)
    for domain, data in arrays.items():
        name = qmul.db_name(category, qmul.DOMAIN_FILES[domain], split)
        scipy.io.savemat(folder / name, {"data": data}, do_compression=True)
    if annotation:
        entry = {
            "images": [f"{i + 1}.jpg" for i in range(n)],
            "sketches": [f"{i + 1}.png" for i in range(n)],
            "triplets": _triplets(n),
        }
        (folder / f"{category}_annotation.json").write_text(json.dumps({split: entry}))
    return arrays


def _records(folder):
    return [schema.parse_labelled_image(r) for r in tfrecord.record_dataset(folder)]


def _text(record, key):
    return record[key].numpy().decode()


def _by_domain(records, domain):
    return {
        int(_text(r, schema.INSTANCE_ID)): r for r in records if _text(r, schema.DOMAIN) == domain
    }


def _pairs(record):
    return record[schema.PREFERENCE_PAIRS].numpy().reshape(-1, 2).tolist()


def test_registered():
    assert SOURCES["qmul"] is qmul.prepare


def test_train_val_round_trip(tmp_path):
    arrays = _qmul(tmp_path / "shoes")
    out = tmp_path / "out"
    parts = prepare("qmul", tmp_path / "shoes", out, category="shoes", val_fraction=0.5,
                    val_seed=3)  # fmt: skip
    assert sorted(parts) == ["train", "val"]
    want_val = sorted(np.random.default_rng(3).permutation(N)[:3].tolist())
    objects = {}
    for part, manifest in parts.items():
        assert (out / part / tfrecord.MANIFEST).is_file()
        assert manifest["classes"] == ["shoes"]
        assert manifest["counts"]["per_domain"] == {"edge": 3, "sketch": 3}
        info = manifest["info"]
        assert info["val_objects"] == want_val and info["val_seed"] == 3
        assert info["val_fraction"] == 0.5 and info["part"] == part
        assert info["preference_pairs"]["from"] == "shoes_annotation.json"
        records = _records(out / part)
        sketches, edges = _by_domain(records, "sketch"), _by_domain(records, "edge")
        # Every object once per domain, paired by instance id.
        assert sorted(sketches) == sorted(edges)
        objects[part] = set(sketches)
        for domain, by_id in (("sketch", sketches), ("edge", edges)):
            for i, r in by_id.items():
                assert _text(r, schema.INSTANCE_ID) == f"{i:05d}"
                assert int(r[schema.CLASS_ID]) == 0 and _text(r, schema.CLASS_NAME) == "shoes"
                assert _text(r, schema.SOURCE) == f"shoes_{domain}_db_train.mat[{i}]"
                pixels = tf.io.decode_png(r[schema.IMAGE]).numpy()
                assert pixels.shape == (16, 16, 1)  # grey "L"
                np.testing.assert_array_equal(pixels[..., 0], arrays[domain][i])
        # A sketch keeps the annotated pairs whose two objects are both in its part.
        written = 0
        for i, r in sketches.items():
            want = [p for p in _triplets()[i] if set(p) <= set(sketches)]
            assert _pairs(r) == want
            written += len(want)
        assert all(_pairs(r) == [] for r in edges.values())
        assert info["preference_pairs"]["written"] == written
        assert info["preference_pairs"]["dropped_other_part"] == 2 * 3 - written
    assert objects["val"] == set(want_val)
    assert objects["train"] | objects["val"] == set(range(N))
    assert not objects["train"] & objects["val"]
    # The carve depends on the seed only.
    again = prepare("qmul", tmp_path / "shoes", tmp_path / "again", category="shoes",
                    val_fraction=0.5, val_seed=3)  # fmt: skip
    assert again["val"]["info"]["val_objects"] == want_val
    other = prepare("qmul", tmp_path / "shoes", tmp_path / "other", val_fraction=0.5, val_seed=1)
    assert other["val"]["info"]["val_objects"] == sorted(
        np.random.default_rng(1).permutation(N)[:3].tolist()
    )


def test_no_val_then_test_split_beside_it(tmp_path):
    folder = tmp_path / "shoes"
    _qmul(folder)
    out = tmp_path / "out"
    parts = prepare("qmul", folder, out, val_fraction=0)  # category inferred
    assert sorted(parts) == ["train"] and not (out / "val").exists()
    assert parts["train"]["info"]["val_objects"] == []
    assert parts["train"]["counts"]["per_domain"] == {"edge": N, "sketch": N}
    # Every pair kept: no other part.
    sketches = _by_domain(_records(out / "train"), "sketch")
    assert [_pairs(sketches[i]) for i in range(N)] == _triplets()
    with pytest.raises(tfrecord.DatasetError, match="train exists"):
        prepare("qmul", folder, out, val_fraction=0)
    # The test files beside the train ones; the annotation has no "test" key.
    test_arrays = _qmul(folder, split="test", n=4, seed=7, annotation=False)
    before = sorted(os.listdir(out / "train"))
    parts = prepare("qmul", folder, out, category="shoes", split="test")
    assert sorted(parts) == ["test"] and sorted(os.listdir(out)) == ["test", "train"]
    assert sorted(os.listdir(out / "train")) == before
    info = parts["test"]["info"]
    assert info["split"] == "test" and info["val_objects"] == []
    assert info["preference_pairs"]["from"] == "none: shoes_annotation.json has no 'test' key"
    records = _records(out / "test")
    assert len(records) == 2 * 4 and all(_pairs(r) == [] for r in records)
    edge = _by_domain(records, "edge")[3]
    assert _text(edge, schema.SOURCE) == "shoes_edge_db_test.mat[3]"
    np.testing.assert_array_equal(tf.io.decode_png(edge[schema.IMAGE]).numpy()[..., 0],
                                  test_arrays["edge"][3])  # fmt: skip


def test_photos_parent_root_and_no_annotation(tmp_path):
    arrays = _qmul(tmp_path / "data" / "chairs", "chairs", photo="rgb", annotation=False)
    _qmul(tmp_path / "data" / "shoes", "shoes")
    # The parent of both category folders: the category picks one; None is ambiguous.
    with pytest.raises(ValueError, match=r"2 sketch dbs .*chairs/chairs_sketch_db_train.mat.*"
                       r"shoes/shoes_sketch_db_train.mat.*pass category="):  # fmt: skip
        prepare("qmul", tmp_path / "data", tmp_path / "x")
    parts = prepare("qmul", tmp_path / "data", tmp_path / "out", category="chairs")
    assert not (tmp_path / "x").exists()
    for part, manifest in parts.items():
        n = manifest["info"]["num_objects"]
        assert manifest["counts"]["per_domain"] == {"edge": n, "photo": n, "sketch": n}
        assert manifest["info"]["files"]["photo"] == "chairs_image_db_train.mat"
        assert manifest["info"]["root"] == str(tmp_path / "data" / "chairs")
        assert manifest["info"]["preference_pairs"]["from"].startswith(
            "none: no chairs_annotation.json"
        )
        records = _records(tmp_path / "out" / part)
        assert all(_pairs(r) == [] for r in records)
        for i, r in _by_domain(records, "photo").items():
            assert _text(r, schema.SOURCE) == f"chairs_image_db_train.mat[{i}]"
            np.testing.assert_array_equal(tf.io.decode_png(r[schema.IMAGE]).numpy(),
                                          arrays["photo"][i])  # fmt: skip
    # Grey photos [N, H, W] are written as grey PNGs.
    grey = _qmul(tmp_path / "grey", "shoes", photo="grey")
    parts = prepare("qmul", tmp_path / "grey", tmp_path / "out_grey", val_fraction=0)
    photos = _by_domain(_records(tmp_path / "out_grey" / "train"), "photo")
    assert len(photos) == N
    pixels = tf.io.decode_png(photos[2][schema.IMAGE]).numpy()
    assert pixels.shape == (12, 14, 1)
    np.testing.assert_array_equal(pixels[..., 0], grey["photo"][2])


def _save(folder, kind, data, key="data", category="shoes"):
    scipy.io.savemat(folder / qmul.db_name(category, kind, "train"), {key: data})


def _v73(path):
    # What MATLAB's save -v7.3 writes: a 512-byte text header, then an HDF5 file.
    head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    path.write_bytes(head.ljust(116, b" ") + bytes(8) + b"\x00\x02IM" + bytes(384)
                     + b"\x89HDF\r\n\x1a\n" + bytes(64))  # fmt: skip


def _annotation(folder, content):
    path = folder / "shoes_annotation.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))


_U8 = np.zeros([N, 16, 16], np.uint8)
_BAD_INPUTS = {
    "missing sketch db": (
        lambda f: (f / "shoes_sketch_db_train.mat").unlink(),
        r"shoes/shoes_sketch_db_train.mat: missing",
    ),
    "missing edge db": (
        lambda f: (f / "shoes_edge_db_train.mat").unlink(),
        r"shoes/shoes_edge_db_train.mat: missing",
    ),
    "not a mat file": (
        lambda f: (f / "shoes_edge_db_train.mat").write_bytes(b"<html>not a mat file</html>" * 9),
        r"shoes_edge_db_train.mat: not a readable MATLAB \(v5/v7\) file",
    ),
    "empty file": (
        lambda f: (f / "shoes_sketch_db_train.mat").write_bytes(b""),
        r"shoes_sketch_db_train.mat: not a readable MATLAB",
    ),
    "v7.3": (
        lambda f: _v73(f / "shoes_sketch_db_train.mat"),
        r"shoes_sketch_db_train.mat: a MATLAB v7.3 \(HDF5\) file.*'-v7'.*h5py",
    ),
    "no data key": (
        lambda f: _save(f, "edge", _U8, key="edges"),
        r"shoes_edge_db_train.mat: no variable 'data' \(found \['edges'\]\)",
    ),
    "float pixels": (
        lambda f: _save(f, "sketch", _U8.astype(np.float32)),
        r"shoes_sketch_db_train.mat: 'data' holds float32, expected uint8",
    ),
    "two channels": (
        lambda f: _save(f, "edge", np.zeros([N, 16, 16, 2], np.uint8)),
        r"shoes_edge_db_train.mat: 'data' has shape \[6, 16, 16, 2\], expected \[N, H, W\]",
    ),
    "2-D array": (
        lambda f: _save(f, "edge", np.zeros([16, 16], np.uint8)),
        r"shoes_edge_db_train.mat: 'data' has shape \[16, 16\]",
    ),
    "no objects": (
        lambda f: _save(f, "sketch", np.zeros([0, 16, 16], np.uint8)),
        r"shoes_sketch_db_train.mat: 'data' has shape \[0, 16, 16\].*N > 0",
    ),
    "edge count": (
        lambda f: _save(f, "edge", _U8[:5]),
        r"shoes_edge_db_train.mat: holds 5 objects but \S+shoes_sketch_db_train.mat holds 6",
    ),
    "photo count": (
        lambda f: _save(f, "image", np.zeros([4, 8, 8, 3], np.uint8)),
        r"shoes_image_db_train.mat: holds 4 objects but \S+shoes_sketch_db_train.mat holds 6",
    ),
    "invalid json": (
        lambda f: _annotation(f, '{"train": {"triplets": [[[0, 1]],'),
        r"shoes_annotation.json: not valid JSON",
    ),
    "json not an object": (
        lambda f: _annotation(f, [1, 2]),
        r"shoes_annotation.json: expected a JSON object",
    ),
    "split without triplets": (
        lambda f: _annotation(f, {"train": {"images": []}}),
        r"shoes_annotation.json: 'train' must be an object with a 'triplets' list",
    ),
    "triplets length": (
        lambda f: _annotation(f, {"train": {"triplets": _triplets()[:5]}}),
        r"shoes_annotation.json: train.triplets has 5 entries, but the .mat files hold N=6",
    ),
    "images length": (
        lambda f: _annotation(f, {"train": {"images": ["1.jpg"], "triplets": _triplets()}}),
        r"shoes_annotation.json: train.images has 1 entries",
    ),
    "not a pair": (
        lambda f: _annotation(f, {"train": {"triplets": [[[0, 1, 2]]] + _triplets()[1:]}}),
        r"shoes_annotation.json: train.triplets\[0\] \(sketch 0\) must be a list of "
        r"\[closer, farther\]",
    ),
    "index out of range": (
        lambda f: _annotation(f, {"train": {"triplets": _triplets()[:2] + [[[1, 6]]] * 4}}),
        r"shoes_annotation.json: train.triplets\[2\] \(sketch 2\) pair \[1, 6\] names an "
        r"object outside \[0, N\) with N=6",
    ),
    "negative index": (
        lambda f: _annotation(f, {"train": {"triplets": [[[-1, 0]]] * N}}),
        r"triplets\[0\] \(sketch 0\) pair \[-1, 0\]",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_INPUTS))
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, case):
    folder = tmp_path / "shoes"
    _qmul(folder)
    damage, message = _BAD_INPUTS[case]
    damage(folder)
    out = tmp_path / "out"
    out.mkdir()  # an existing out folder is fine; only parts are refused
    with pytest.raises(BadInputError, match=message):
        prepare("qmul", folder, out, category="shoes")
    assert os.listdir(out) == []
    with pytest.raises(BadInputError, match=message):
        prepare("qmul", folder, tmp_path / "new", category="shoes")
    assert not (tmp_path / "new").exists()


def test_bad_arguments(tmp_path):
    _qmul(tmp_path / "shoes")
    with pytest.raises(BadInputError, match=r"chairs_sketch_db_train.mat: missing"):
        prepare("qmul", tmp_path / "shoes", tmp_path / "o", category="chairs")
    with pytest.raises(BadInputError, match=r"no \*_sketch_db_test.mat"):
        prepare("qmul", tmp_path / "shoes", tmp_path / "o", split="test")
    with pytest.raises(ValueError, match="split must be one of"):
        prepare("qmul", tmp_path / "shoes", tmp_path / "o", split="valid")
    with pytest.raises(ValueError, match="val_fraction must be in"):
        prepare("qmul", tmp_path / "shoes", tmp_path / "o", val_fraction=1.0)
    with pytest.raises(ValueError, match="gives 0 validation objects"):
        prepare("qmul", tmp_path / "shoes", tmp_path / "o", val_fraction=0.05)
    with pytest.raises(ValueError, match="group_by"):
        prepare("qmul", tmp_path / "shoes", tmp_path / "o", group_by="instance")
    assert not (tmp_path / "o").exists()


def test_a_failing_later_part_leaves_the_old_parts_and_no_new_one(tmp_path, monkeypatch):
    folder = tmp_path / "shoes"
    _qmul(folder)
    out = tmp_path / "out"
    first = prepare("qmul", folder, out, val_fraction=0.5, val_seed=0)
    with pytest.raises(tfrecord.DatasetError, match="exists"):
        prepare("qmul", folder, out, val_fraction=0.5, val_seed=1)
    old = {p: (out / p / tfrecord.MANIFEST).read_text() for p in ("train", "val")}
    convert = qmul.QmulPlan.convert

    def fail_in_val(self, item):
        if item.part == "val":
            raise ValueError("disk full")
        return convert(self, item)

    monkeypatch.setattr(qmul.QmulPlan, "convert", fail_in_val)
    with pytest.raises(ValueError, match="disk full"):
        prepare("qmul", folder, out, val_fraction=0.5, val_seed=1, overwrite=True)
    # train/ of this call was complete but is gone; the old parts are untouched.
    assert sorted(os.listdir(out)) == ["train", "val"]
    assert {p: (out / p / tfrecord.MANIFEST).read_text() for p in old} == old
    with pytest.raises(ValueError, match="disk full"):
        prepare("qmul", folder, tmp_path / "fresh", val_fraction=0.5)
    assert not (tmp_path / "fresh").exists()
    monkeypatch.setattr(qmul.QmulPlan, "convert", convert)
    new = prepare("qmul", folder, out, val_fraction=0.5, val_seed=1, overwrite=True)
    assert sorted(os.listdir(out)) == ["train", "val"]
    assert new["val"]["info"]["val_objects"] != first["val"]["info"]["val_objects"]
    assert tfrecord.read_manifest(out / "val")["info"]["val_seed"] == 1


@pytest.mark.shared_data
def test_shared_shoes_train_split(shared_data, tmp_path):
    folder = shared_data / "qmul" / "shoes"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    parts = prepare("qmul", folder, tmp_path / "qmul_shoes", category="shoes")
    assert {p: m["counts"]["per_domain"]["sketch"] for p, m in parts.items()} == {
        "train": 243,
        "val": 61,
    }
    assert parts["val"]["info"]["val_objects"] == sorted(
        np.random.default_rng(0).permutation(304)[:61].tolist()
    )
    sketch_db = scipy.io.loadmat(folder / "shoes_sketch_db_train.mat")["data"]
    for part in parts:
        records = _records(tmp_path / "qmul_shoes" / part)
        sketches, edges = _by_domain(records, "sketch"), _by_domain(records, "edge")
        assert sorted(sketches) == sorted(edges)
        pairs = np.concatenate([np.reshape(_pairs(r), [-1, 2]) for r in sketches.values()])
        assert len(pairs) == parts[part]["info"]["preference_pairs"]["written"] > 0
        assert set(pairs.reshape(-1).tolist()) <= set(sketches)
        i = min(sketches)
        pixels = tf.io.decode_png(sketches[i][schema.IMAGE]).numpy()[..., 0]
        np.testing.assert_array_equal(pixels, sketch_db[i])


def test_prepare_data_cli(tmp_path):
    _qmul(tmp_path / "shoes")
    out = tmp_path / "records"
    out.mkdir()  # --out may exist for qmul
    args = [sys.executable, "prepare_data.py", "--source=qmul", f"--root={tmp_path / 'shoes'}",
            "--category=shoes", "--split=train", "--val_fraction=0.5", "--val_seed=2",
            f"--out={out}"]  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    run = lambda: subprocess.run(  # noqa: E731
        args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"out": str(out), "train/records": 6, "val/records": 6, "skipped": 0}
    manifest = tfrecord.read_manifest(out / "val")
    assert manifest["info"]["val_seed"] == 2
    proc = run()  # the parts exist now
    assert proc.returncode == 2 and "train exists" in proc.stderr
