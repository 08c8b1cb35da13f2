"""Tests for sketch_tf.data.tfrecord: sharded writer, manifest checks, corrupt shards and bad
records."""

import io
import json
import re

import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.data import schema, tfrecord


@pytest.fixture(autouse=True)
def _record_checks_on(monkeypatch):
    # The in-graph record check is opt-in (tfrecord.CHECK_RECORDS_ENV); these tests test it.
    monkeypatch.setenv("SKETCH_TF_CHECK_RECORDS", "1")


def _png(value=0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), value).save(buf, format="PNG")
    return buf.getvalue()


def _write(out, n_per=(3, 2), group_by="none", shard_bytes=1 << 20, **kw):
    classes = ["cat", "dog"]
    with tfrecord.ShardedWriter(
        out, "labelled_image", shard_bytes=shard_bytes, group_by=group_by, **kw
    ) as w:
        for cid, n in enumerate(n_per):
            for i in range(n):
                for dom in ("photo", "sketch"):
                    rec = schema.encode_labelled_image(_png(i), cid, classes[cid], dom, str(i))
                    w.write(rec, class_id=cid, class_name=classes[cid], domain=dom)
        w.skip("bad/x.png", "cannot identify image file")
        w.info["seed"] = 5
    return w.manifest


def _read_all(out):
    return [r.numpy() for r in tfrecord.record_dataset(out)]


def test_writer_manifest_counts_and_shards(tmp_path):
    out = tmp_path / "ds"
    m = _write(out, shard_bytes=300)
    on_disk = tfrecord.read_manifest(out, kind="labelled_image")
    assert on_disk == json.loads(json.dumps(m))
    assert m["num_records"] == 10
    assert m["classes"] == ["cat", "dog"] and m["domains"] == ["photo", "sketch"]
    assert m["counts"]["per_class"] == {"cat": 6, "dog": 4}
    assert m["counts"]["per_domain_class"]["sketch"] == {"cat": 3, "dog": 2}
    assert m["skipped"] == {
        "count": 1,
        "items": [{"path": "bad/x.png", "reason": "cannot identify image file"}],
    }
    assert m["info"] == {"seed": 5}
    assert sum(s["records"] for s in m["shards"]) == 10
    # every record is ~100 bytes, so a 300-byte limit gives several shards
    assert len(m["shards"]) > 1
    for s in m["shards"]:
        assert s["sha256"] == tfrecord.sha256_file(out / s["file"])
    assert len(tfrecord.list_shards(out, verify=True)) == len(m["shards"])
    recs = _read_all(out)
    assert len(recs) == 10
    assert sorted(schema.class_names_from(recs, "labelled_image")) == ["cat"] * 6 + ["dog"] * 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_group_by_domain_class(tmp_path):
    m = _write(tmp_path / "ds", group_by="domain_class")
    groups = sorted((s["domain"], s["class"], s["records"]) for s in m["shards"])
    assert groups == [
        ("photo", "cat", 3),
        ("photo", "dog", 2),
        ("sketch", "cat", 3),
        ("sketch", "dog", 2),
    ]


def test_crash_leaves_nothing(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with tfrecord.ShardedWriter(out, "labelled_image") as w:
            w.write(
                schema.encode_labelled_image(_png(), 0, "a", "sketch"),
                class_id=0,
                class_name="a",
                domain="sketch",
            )
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_errors(tmp_path):
    with pytest.raises(tfrecord.DatasetError, match="without any record.*'dog'"):
        _write(tmp_path / "a", n_per=(1, 0), classes=["cat", "dog"])
    with pytest.raises(tfrecord.DatasetError, match="no records"):
        with tfrecord.ShardedWriter(tmp_path / "b", "labelled_image"):
            pass
    with pytest.raises(tfrecord.DatasetError, match="without gaps"):
        with tfrecord.ShardedWriter(tmp_path / "c", "labelled_image") as w:
            w.write(b"x", class_id=1, class_name="b", domain="d")
    _write(tmp_path / "d")
    with pytest.raises(tfrecord.DatasetError, match="exists"):
        _write(tmp_path / "d")
    m = _write(tmp_path / "d", n_per=(1, 1), overwrite=True)
    assert tfrecord.read_manifest(tmp_path / "d")["num_records"] == m["num_records"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(tfrecord.DatasetError, match="manifest.json: manifest missing"):
        tfrecord.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(tfrecord.DatasetError, match="manifest.json: invalid JSON"):
        tfrecord.read_manifest(tmp_path)
    out = tmp_path / "ds"
    m = _write(out)
    with pytest.raises(tfrecord.DatasetError, match="holds 'labelled_image'"):
        tfrecord.read_manifest(out, kind="correspondence_pair")
    bad = dict(m, schema_version=schema.SCHEMA_VERSION + 1)
    (out / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(tfrecord.DatasetError, match="schema version"):
        tfrecord.read_manifest(out)
    (out / "manifest.json").write_text(json.dumps(m))
    shard = out / m["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(tfrecord.DatasetError, match=f"shard {shard} is corrupt"):
        tfrecord.list_shards(out, verify=True)
    shard.unlink()
    with pytest.raises(tfrecord.DatasetError, match="missing"):
        tfrecord.list_shards(out)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_fails_with_its_name_at_read_time(tmp_path, damage):
    out = tmp_path / "ds"
    m = _write(out, shard_bytes=300)
    shard = out / m["shards"][1]["file"]
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) - 20])
    else:  # flip a payload byte: the record's crc no longer matches
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        shard.write_bytes(bytes(b))
    with pytest.raises(tf.errors.InvalidArgumentError, match=shard.name):
        _read_all(out)
    # intact shards still read fine on their own
    ok = tfrecord.record_dataset(out, shards=[m["shards"][0]])
    assert len(list(ok)) == m["shards"][0]["records"]


# ---- bad records: named by shard, record index and feature --------------------------------------
def _example(**features) -> bytes:
    """A tf.train.Example holding each keyword as a one-value bytes / float / int64 list."""
    feature = {}
    for key, value in features.items():
        if isinstance(value, bytes):
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        elif isinstance(value, float):
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        else:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


_BAD_RECORDS = {
    "missing_feature": (
        lambda: _example(image=_png(), class_name=b"cat", domain=b"sketch"),
        "feature class_id missing \\(labelled_image schema v1 expects int64_list with 1 value",
    ),
    "other_kind": (
        lambda: schema.encode_correspondence_pair(
            _png(), _png(), [[1, 2]], [[3, 4]], [5], "cat", 0
        ),
        "feature image missing .*holds the features of a correspondence_pair record",
    ),
    "class_id_as_bytes": (
        lambda: _example(image=_png(), class_id=b"0", class_name=b"cat", domain=b"sketch"),
        "feature class_id holds a bytes_list \\(labelled_image schema v1 expects int64_list",
    ),
    "class_id_as_float": (
        lambda: _example(image=_png(), class_id=0.0, class_name=b"cat", domain=b"sketch"),
        "feature class_id holds a float_list",
    ),
    "optional_feature_of_wrong_dtype": (
        lambda: _example(
            image=_png(), class_id=0, class_name=b"cat", domain=b"sketch", style_id=b"x"
        ),
        "feature style_id holds a bytes_list",
    ),
    "class_id_not_in_manifest": (
        lambda: _example(image=_png(), class_id=5, class_name=b"cat", domain=b"sketch"),
        "feature class_id = 5 is outside the 2 classes of the manifest",
    ),
    "class_name_not_the_manifest_one": (
        lambda: _example(image=_png(), class_id=1, class_name=b"cat", domain=b"sketch"),
        "feature class_name = cat but class 1 of the manifest is dog",
    ),
    "not_an_example": (
        lambda: b"\xff\xff\xff\x01 not a proto",
        "not a serialized tf.train.Example",
    ),
}


def _write_with_bad_record(out, bad: bytes, bad_at: int, n: int = 12):
    """A 2-class labelled_image dataset of `n` records in shards of ~2, record `bad_at` bad.

    Returns (manifest, shard entry holding the bad record, its index within that shard).
    """
    classes = ["cat", "dog"]
    with tfrecord.ShardedWriter(out, "labelled_image", shard_bytes=500) as w:
        for i in range(n):
            good = schema.encode_labelled_image(_png(i), i % 2, classes[i % 2], "sketch", str(i))
            w.write(
                bad if i == bad_at else good,
                class_id=i % 2,
                class_name=classes[i % 2],
                domain="sketch",
            )
    first = 0
    for entry in w.manifest["shards"]:
        if first <= bad_at < first + entry["records"]:
            return w.manifest, entry, bad_at - first
        first += entry["records"]
    raise AssertionError("bad record not written")


def _records_until_error(ds):
    """(records read, the InvalidArgumentError message) of iterating `ds` to its end."""
    got = []
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        for record in ds:
            got.append(record)
    return got, error.value.message


@pytest.mark.parametrize("case", sorted(_BAD_RECORDS))
def test_bad_record_fails_naming_shard_record_and_feature(tmp_path, case):
    make_bad, expected = _BAD_RECORDS[case]
    out = tmp_path / "ds"
    manifest, entry, index = _write_with_bad_record(out, make_bad(), bad_at=7)
    assert len(manifest["shards"]) > 2 and index > 0  # good records precede it in its shard
    where = f"record {index} of shard {out / entry['file']}: "
    got, message = _records_until_error(tfrecord.record_dataset(out))
    print(f"{case}: {len(got)} good records, then: {message.split('assertion failed: ')[-1]}")
    assert where in message
    assert re.search(expected, message), message
    assert all(schema.parse_labelled_image(r)[schema.CLASS_ID] >= 0 for r in got)
    if case == "missing_feature":  # read alone, the shard yields the good records before it
        alone, message = _records_until_error(tfrecord.record_dataset(out, shards=[entry]))
        assert len(alone) == index and where in message


def test_extra_feature_passes_and_unchecked_reading(tmp_path):
    bad = _example(image=_png(), class_id=1, class_name=b"dog", domain=b"sketch", added_later=3)
    out = tmp_path / "ds"
    _write_with_bad_record(out, bad, bad_at=7)
    assert len(list(tfrecord.record_dataset(out))) == 12  # unknown features: forward compatible
    missing = _example(image=_png(), class_name=b"dog", domain=b"sketch")
    _write_with_bad_record(tmp_path / "m", missing, bad_at=7)
    assert len(list(tfrecord.record_dataset(tmp_path / "m", check_records=False))) == 12


def test_bad_last_record_and_bad_pair_points(tmp_path):
    _, entry, index = _write_with_bad_record(tmp_path / "a", b"junk", bad_at=11)
    assert index == entry["records"] - 1
    _, message = _records_until_error(tfrecord.record_dataset(tmp_path / "a"))
    assert f"record {index} of shard {tmp_path / 'a' / entry['file']}: not a serialized" in message
    out = tmp_path / "pairs"
    with tfrecord.ShardedWriter(out, "correspondence_pair") as w:
        for i in range(3):
            rec = schema.encode_correspondence_pair(
                _png(), _png(), [[1, 2]], [[3, 4]], [i], "cat", 0
            )
            if i == 2:  # three floats for one point id
                ex = tf.train.Example.FromString(rec)
                ex.features.feature[schema.POINTS_B].float_list.value.append(5.0)
                rec = ex.SerializeToString()
            w.write(rec, class_id=0, class_name="cat", domain="sketch")
    got, message = _records_until_error(tfrecord.record_dataset(out))
    print("pair with 3 floats for 1 point id:", message.split("assertion failed: ")[-1])
    assert len(got) == 2
    assert "record 2 of shard" in message
    assert "feature points_b holds 3 floats, expected (x, y) for each of 1 point ids" in message


def test_training_input_names_the_bad_record(tmp_path):
    from sketch_tf.data import pipeline

    out = tmp_path / "ds"
    bad = _example(image=_png(), class_id=b"1", class_name=b"dog", domain=b"sketch")
    _, entry, index = _write_with_bad_record(out, bad, bad_at=7)
    where = f"record {index} of shard {out / entry['file']}: feature class_id holds a bytes_list"
    _, message = _records_until_error(pipeline.labelled_records(out))
    assert where in message
    print("labelled_records:", message.split("assertion failed: ")[-1].split("\n")[0])
