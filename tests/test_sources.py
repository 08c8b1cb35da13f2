"""Tests for sketch_tf.data.sources on small real data and on layouts built in the test."""

import json
import sqlite3

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sketch_tf.data import schema, tfrecord
from sketch_tf.data.sources import SOURCES, BadInputError, prepare, quickdraw


def _img(path, value=0, size=(12, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path, format=fmt)
    return path


def _records(out):
    return [schema.parse_labelled_image(r) for r in tfrecord.record_dataset(out)]


@pytest.mark.shared_data
def test_folders_on_pacs(shared_data, tmp_path):
    m = prepare("folders", shared_data / "pacs", tmp_path / "pacs", max_per_class=3)
    assert m["domains"] == ["art_painting", "cartoon", "photo", "sketch"]
    assert m["classes"] == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    assert m["num_records"] == 4 * 7 * 3
    assert all(n == 3 for d in m["counts"]["per_domain_class"].values() for n in d.values())
    recs = _records(tmp_path / "pacs")
    first = next(r for r in recs if r[schema.DOMAIN].numpy() == b"sketch")
    src = first[schema.SOURCE].numpy().decode()
    assert src.startswith("sketch/")
    # bytes are kept as is
    assert first[schema.IMAGE].numpy() == (shared_data / "pacs" / src).read_bytes()
    assert m["classes"][int(first[schema.CLASS_ID])] == first[schema.CLASS_NAME].numpy().decode()


@pytest.mark.shared_data
def test_folders_pacs_as_a_style_collection(shared_data, tmp_path):
    # The `style_sbir:pacs` records: 3 gallery styles with labels, the sketches unlabelled,
    # an instance-hashed split that a StyleIndex can sample triplets from.
    from sketch_tf.families.style_sbir.data import StyleIndex

    styles = ["art_painting", "cartoon", "photo"]
    parts = prepare("folders", shared_data / "pacs", tmp_path / "pacs", max_per_class=20,
                    style_domains=styles, test_fraction=0.3)  # fmt: skip
    assert parts["train"]["info"]["styles"] == styles
    for part in ("train", "test"):
        index = StyleIndex(tmp_path / "pacs" / part, styles)
        assert index.groups.shape == (7 * 3, 2)
        assert sorted(index.sketch_keys) == list(range(7))
        anchor, pos, neg = index.triplet_tables("same_content")
        assert np.isfinite(pos).sum(axis=1).min() >= 1 and np.isfinite(neg).sum(axis=1).min() >= 1


def test_folders_sketchy_tx_and_instances(tmp_path):
    root = tmp_path / "Sketchy"
    for cls in ("cat", "dog"):
        for tx in ("tx_000000000000", "tx_000100000000"):
            _img(root / "sketch" / tx / cls / "n01_5-1.png")
            _img(root / "sketch" / tx / cls / "n01_5-2.png", 30)
            _img(root / "photo" / tx / cls / "n01_5.jpg", 200, fmt="JPEG")
    _img(root / "sketch" / "tx_000100000000" / "cat" / "extra-1.png")
    m = prepare("folders", root, tmp_path / "out")
    assert m["counts"]["per_domain_class"] == {
        "photo": {"cat": 1, "dog": 1},
        "sketch": {"cat": 2, "dog": 2},
    }
    recs = _records(tmp_path / "out")
    assert {r[schema.INSTANCE_ID].numpy() for r in recs} == {b"n01_5"}
    m2 = prepare("folders", root, tmp_path / "out2", tx_dir="tx_000100000000", domains=["sketch"])
    assert m2["counts"]["per_class"] == {"cat": 3, "dog": 2}
    with pytest.raises(ValueError, match="not 'tx_9'"):
        prepare("folders", root, tmp_path / "out3", tx_dir="tx_9")


def test_folders_style_labels_and_held_out_split(tmp_path):
    root = tmp_path / "media"
    for domain in ("ink", "oil", "sketch"):
        for cls in ("cat", "dog"):
            for i in range(20):
                _img(root / domain / cls / f"{cls}{i}.png", 10 * i)
    out = tmp_path / "out"
    parts = prepare("folders", root, out, style_domains=["oil", "ink"], test_fraction=0.3)
    assert set(parts) == {"train", "test"}
    n_test, n_train = parts["test"]["num_records"], parts["train"]["num_records"]
    assert n_test + n_train == 3 * 2 * 20 and 0.15 < n_test / 120 < 0.45
    train = _records(out / "train")
    test = _records(out / "test")
    key = lambda r: (r[schema.CLASS_NAME].numpy(), r[schema.INSTANCE_ID].numpy())  # noqa: E731
    # The split is by instance: no instance on both sides, and it is the same every time.
    assert not {key(r) for r in train} & {key(r) for r in test}
    for r in train + test:
        domain = r[schema.DOMAIN].numpy().decode()
        want = {"ink": 0, "oil": 1}.get(domain, -1)  # index in the sorted style list
        assert int(r[schema.STYLE_ID]) == want
        assert int(r[schema.CONTENT_ID]) == (int(r[schema.CLASS_ID]) if want >= 0 else -1)
    again = prepare("folders", root, tmp_path / "again", style_domains=["ink", "oil"],
                    test_fraction=0.3)  # fmt: skip
    assert again["test"]["num_records"] == n_test
    assert parts["test"]["info"]["styles"] == ["ink", "oil"]
    with pytest.raises(ValueError, match="style_domains"):
        prepare("folders", root, tmp_path / "bad", style_domains=["watercolour"])
    with pytest.raises(ValueError, match="test_fraction"):
        prepare("folders", root, tmp_path / "bad2", test_fraction=1.0)


def test_folders_class_layout_bmp_and_errors(tmp_path):
    root = tmp_path / "png"  # TU-Berlin style
    _img(root / "airplane" / "1.png")
    _img(root / "alarm clock" / "2.bmp", 50, fmt="BMP")
    m = prepare("folders", root, tmp_path / "tub")
    assert m["domains"] == ["sketch"] and m["classes"] == ["airplane", "alarm clock"]
    recs = _records(tmp_path / "tub")
    bmp = next(r for r in recs if r[schema.CLASS_NAME].numpy() == b"alarm clock")
    assert bmp[schema.IMAGE].numpy()[:4] == b"\x89PNG"  # re-encoded
    dec = tf.io.decode_image(bmp[schema.IMAGE]).numpy()
    assert dec.shape == (10, 12, 1) and int(dec.max()) == 50
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no image"):
        prepare("folders", root, tmp_path / "x")
    pacs = tmp_path / "pacs"
    _img(pacs / "photo" / "dog" / "a.jpg", fmt="JPEG")
    _img(pacs / "photo" / "cat" / "a.jpg", fmt="JPEG")
    _img(pacs / "sketch" / "dog" / "a.png")
    with pytest.raises(ValueError, match=r"classes \['cat'\] missing in domain 'sketch'"):
        prepare("folders", pacs, tmp_path / "y")
    m = prepare("folders", pacs, tmp_path / "y", allow_missing=True)
    assert m["counts"]["per_domain"] == {"photo": 2, "sketch": 1}
    with pytest.raises(ValueError, match="unknown source"):
        prepare("nope", pacs, tmp_path / "z")


def test_corrupt_image_fails_or_is_skipped(tmp_path):
    root = tmp_path / "png"
    _img(root / "cat" / "ok.png")
    good = (root / "cat" / "ok.png").read_bytes()
    (root / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "cat" / "garbage.jpg").write_bytes(b"not an image at all")
    with pytest.raises(BadInputError, match="garbage.jpg"):
        prepare("folders", root, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    m = prepare("folders", root, tmp_path / "b", skip_bad=True)
    assert m["num_records"] == 1
    assert m["skipped"]["count"] == 2
    assert sorted(p["path"].rsplit("/", 1)[1] for p in m["skipped"]["items"]) == [
        "garbage.jpg",
        "truncated.png",
    ]


def test_rasterize_aspect_and_antialias():
    # a horizontal line 0..100 at y=0: scaled to the inner width, centred vertically
    img = np.asarray(
        quickdraw.rasterize(
            [np.array([[0.0, 0.0], [100.0, 0.0]])], size=64, line_width=2.0, margin=8
        )
    )
    assert img.shape == (64, 64)
    ink = np.argwhere(img < 128)
    assert ink[:, 0].min() >= 30 and ink[:, 0].max() <= 33  # rows around the centre (32)
    assert ink[:, 1].min() in (7, 8) and ink[:, 1].max() in (55, 56)  # x spans 8..56
    assert len(np.unique(img)) > 2  # grey anti-aliased edge values
    assert img[0, 0] == 255


def test_stroke3_to_strokes():
    s3 = [[1, 2, 0], [3, 0, 1], [10, 10, 0], [1, 1, 1]]
    strokes = quickdraw.strokes_from_stroke3(s3, "x")
    np.testing.assert_array_equal(strokes[0], [[1, 2], [4, 2]])
    np.testing.assert_array_equal(strokes[1], [[14, 12], [15, 13]])


@pytest.mark.shared_data
def test_quickdraw_ndjson_real(shared_data, tmp_path):
    m = prepare(
        "quickdraw",
        shared_data / "quickdraw",
        tmp_path / "qd",
        size=64,
        max_per_class=4,
        categories=["cat", "The Eiffel Tower"],
    )
    assert m["classes"] == ["The Eiffel Tower", "cat"]
    assert m["counts"]["per_class"] == {"The Eiffel Tower": 4, "cat": 4}
    first_line = json.loads((shared_data / "quickdraw" / "cat.ndjson").open().readline())
    recs = _records(tmp_path / "qd")
    cat = [r for r in recs if r[schema.CLASS_NAME].numpy() == b"cat"]
    assert cat[0][schema.INSTANCE_ID].numpy().decode() == first_line["key_id"]
    img = tf.io.decode_png(cat[0][schema.IMAGE]).numpy()
    assert img.shape == (64, 64, 1) and img.min() == 0 and img.max() == 255


def test_quickdraw_npz_and_bad_lines(tmp_path):
    drawings = np.empty(2, dtype=object)
    drawings[0] = np.array([[0, 0, 0], [5, 5, 1]], np.int16)
    drawings[1] = np.array([[0, 0, 0], [0, 9, 0], [9, 0, 1]], np.int16)
    np.savez(tmp_path / "bee.npz", train=drawings, valid=drawings[:1], test=drawings[:1])
    m = prepare("quickdraw", tmp_path / "bee.npz", tmp_path / "o1", size=32)
    assert m["counts"]["per_class"] == {"bee": 2}
    m = prepare("quickdraw", tmp_path / "bee.npz", tmp_path / "o2", size=32, npz_split="valid")
    assert m["num_records"] == 1
    nd = tmp_path / "nd" / "ant.ndjson"
    nd.parent.mkdir()
    nd.write_text('{"word": "ant", "drawing": [[[0, 10], [0, 10]]]}\n{"word": "ant", "dr\n')
    with pytest.raises(BadInputError, match="ant.ndjson:2: invalid JSON"):
        prepare("quickdraw", nd.parent, tmp_path / "o3")
    m = prepare("quickdraw", nd.parent, tmp_path / "o3", skip_bad=True)
    assert m["num_records"] == 1 and m["skipped"]["items"][0]["path"].endswith("ant.ndjson:2")


def write_sketchzooms_tree(root, size=(40, 30)):
    """A tiny tree in the original SketchZooms layout: `csv/train.csv` as pandas writes it
    (leading unnamed index column), `view` = "<view of model_0> <view of model_1>", and one
    point-centred PNG per (model, point, view). Returns the rows written."""
    (root / "csv").mkdir(parents=True)
    rows = [
        # model_0, model_1, index_0, index_1, view, model
        ("m1", "m2", 3, 7, "0 4", "Chair"),
        ("m2", "m3", 5, 2, "1 8", "Chair"),
        ("m3", "m1", 9, 6, "5 5", "Chair"),
        ("a1", "a2", 0, 11, "2 6", "Airplane"),
        ("a2", "a1", 4, 1, "4 0", "Airplane"),
    ]
    lines = [",model_0,model_1,index_0,index_1,view,model"]
    lines += [f"{i},{','.join(map(str, r))}" for i, r in enumerate(rows)]
    (root / "csv" / "train.csv").write_text("\n".join(lines) + "\n")
    for m0, m1, i0, i1, view, cat in rows:
        v0, v1 = view.split()
        _img(root / f"pts_{cat}" / m0 / str(i0) / f"view_{v0}.png", size=size)
        _img(root / f"pts_{cat}" / m1 / str(i1) / f"view_{v1}.png", size=size)
    return rows


def test_sketchzooms_layout(tmp_path):
    root = tmp_path / "sz"
    rows = write_sketchzooms_tree(root)
    m = prepare("sketchzooms", root, tmp_path / "out")
    assert m["kind"] == "correspondence_pair"
    assert m["classes"] == ["Airplane", "Chair"]
    assert m["num_records"] == len(rows)  # every row converts
    assert m["counts"]["per_class"] == {"Airplane": 2, "Chair": 3}
    recs = [schema.parse_correspondence_pair(r) for r in tfrecord.record_dataset(tmp_path / "out")]
    chair = [r for r in recs if r[schema.CATEGORY].numpy() == b"Chair"]
    np.testing.assert_array_equal(chair[0][schema.POINTS_A].numpy(), [[20.0, 15.0]])
    assert {int(r[schema.POINT_IDS][0]) for r in chair} == {3, 5, 9}
    # Drawing A uses the first view id, drawing B the second.
    views = {(r[schema.VIEW_A].numpy().decode(), r[schema.VIEW_B].numpy().decode()) for r in recs}
    assert views == {tuple(r[4].split()) for r in rows}
    (root / "pts_Chair" / "m3" / "2" / "view_8.png").unlink()  # B of row 2
    with pytest.raises(BadInputError, match=r"train.csv:3: .*m3/2/view_8.png"):
        prepare("sketchzooms", root, tmp_path / "out2")
    m = prepare("sketchzooms", root, tmp_path / "out2b", skip_bad=True)
    assert m["num_records"] == len(rows) - 1 and len(m["skipped"]["items"]) == 1
    bad = (root / "csv" / "train.csv").read_text().replace("0 4", "0")
    (root / "csv" / "train.csv").write_text(bad)
    with pytest.raises(BadInputError, match=r"train.csv:2: view='0': expected two view ids"):
        prepare("sketchzooms", root, tmp_path / "out4")
    (root / "csv" / "test.csv").write_text("model_0,model_1,index_0,view,model\n")
    with pytest.raises(ValueError, match=r"missing columns \['index_1'\]"):
        prepare("sketchzooms", root, tmp_path / "out3", split="test")


def test_style_csv_and_bam_sqlite(tmp_path):
    root = tmp_path / "bam"
    _img(root / "1.jpg", 10, fmt="JPEG")
    _img(root / "2.png", 20)
    _img(root / "3.png", 30)
    _img(root / "4.png", 40)
    db = root / "bam.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE modules (mid TEXT, src TEXT)")
    con.execute(
        "CREATE TABLE automatic_labels (mid TEXT, media_oilpaint TEXT, "
        "media_watercolor TEXT, content_cat TEXT, content_tree TEXT)"
    )
    con.executemany(
        "INSERT INTO automatic_labels VALUES (?,?,?,?,?)",
        [
            ("1", "positive", "negative", "positive", "negative"),
            ("2", "negative", "positive", "negative", "positive"),
            ("3", "positive", "positive", "positive", "negative"),  # two styles: unlabelled
            ("4", "unsure", "positive", "positive", "negative"),
        ],
    )
    con.commit()
    con.close()
    m = prepare("style", root, tmp_path / "o1", sqlite_path=db)
    assert m["classes"] == ["cat", "tree"] and m["domains"] == ["oilpaint", "watercolor"]
    assert m["info"]["unlabelled_rows"] == 1
    assert m["counts"]["per_domain_class"] == {
        "oilpaint": {"cat": 1},
        "watercolor": {"cat": 1, "tree": 1},
    }
    recs = {r[schema.SOURCE].numpy(): r for r in _records(tmp_path / "o1")}
    r4 = recs[b"4.png"]
    assert int(r4[schema.STYLE_ID]) == 1 and int(r4[schema.CONTENT_ID]) == 0
    assert r4[schema.DOMAIN].numpy() == b"watercolor"
    (root / "labels.csv").write_text("path,style,content\n1.jpg,pen_ink,dog\n2.png,comic,dog\n")
    m = prepare("style", root, tmp_path / "o2")
    assert m["info"]["styles"] == ["comic", "pen_ink"] and m["classes"] == ["dog"]
    # Split by instance (stable hash): 12 instances per class, 3 images each.
    rows = [f"{k % 4 + 1}.{'jpg' if k % 4 == 0 else 'png'},{st},{cls},{cls}{k // 3}"
            for cls in ("cat", "dog") for k in range(36) for st in ("comic",)]  # fmt: skip
    rows += [r.replace("comic", "ink") for r in rows[::2]]
    (root / "many.csv").write_text("path,style,content,instance\n" + "\n".join(rows) + "\n")
    split = prepare("style", root, tmp_path / "o4", csv_path=root / "many.csv", test_fraction=0.3)
    assert set(split) == {"train", "test"}
    assert split["train"]["num_records"] + split["test"]["num_records"] == len(rows)
    by_part = {
        part: {r[schema.INSTANCE_ID].numpy() for r in _records(tmp_path / "o4" / part)}
        for part in ("train", "test")
    }
    assert by_part["test"] and not by_part["train"] & by_part["test"]
    (root / "bad.csv").write_text("path,style,content\nmissing.png,comic,dog\n")
    with pytest.raises(BadInputError, match="missing.png"):
        prepare("style", root, tmp_path / "o3", csv_path=root / "bad.csv")


def test_registry_lists_all_sources():
    assert sorted(SOURCES) == ["folders", "qmul", "quickdraw", "sketchzooms", "style"]


def test_unicode_and_spaces_in_class_names_and_non_image_files(tmp_path):
    # Class names are folder names as they are (UTF-8 in the records and the manifest);
    # files without an image extension are ignored; a file named like an image that does
    # not decode is an error naming it, or a counted skip with skip_bad.
    root = tmp_path / "src"
    for rel in ("photo/hot dog/a.png", "photo/café crème/b.png", "sketch/hot dog/c.png",
                "sketch/café crème/d.png"):  # fmt: skip
        _img(root / rel)
    (root / "photo" / "hot dog" / "notes.txt").write_text("not an image, ignored")
    m = prepare("folders", root, tmp_path / "a")
    assert m["classes"] == ["café crème", "hot dog"] and m["num_records"] == 4
    names = {
        schema.parse_labelled_image(r)[schema.CLASS_NAME].numpy().decode()
        for r in tfrecord.record_dataset(tmp_path / "a")
    }
    assert names == {"café crème", "hot dog"}
    (root / "photo" / "hot dog" / "fake.png").write_text("not a png")
    with pytest.raises(BadInputError, match="hot dog/fake.png: not a decodable image.*--skip_bad"):
        prepare("folders", root, tmp_path / "b")
    m = prepare("folders", root, tmp_path / "c", skip_bad=True)
    assert m["num_records"] == 4 and m["skipped"]["count"] == 1
    assert m["skipped"]["items"][0]["path"].endswith("hot dog/fake.png")
