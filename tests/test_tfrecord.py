"""Tests for sketch_tf.data.tfrecord: sharded writer, manifest checks, corrupt shards."""

import io
import json

import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.data import schema, tfrecord


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
