"""Tests for sketch_tf.data.splits."""

import io

import numpy as np
import pytest
from PIL import Image

from sketch_tf.data import schema, splits, tfrecord


def _png(v):
    buf = io.BytesIO()
    Image.fromarray(np.full((3, 3), v, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write(out, values):
    with tfrecord.ShardedWriter(out, "labelled_image") as w:
        for v in values:
            w.write(
                schema.encode_labelled_image(_png(v), 0, "a", "sketch", str(v), f"{v}.png"),
                class_id=0,
                class_name="a",
                domain="sketch",
            )


def test_standard_lists():
    sk = splits.read_class_list("sketchy_21_unseen")
    assert len(sk) == 21 and sk[0] == "bat" and sk[-1] == "window"
    assert splits.read_class_list("pacs_unseen.txt") == ["house", "person"]


def test_seen_unseen_and_unknown(tmp_path):
    seen, unseen = splits.seen_unseen(["dog", "house", "person", "cat"], "pacs_unseen")
    assert seen == ["dog", "cat"] and unseen == ["house", "person"]
    with pytest.raises(ValueError, match=r"\['person'\] are not in the dataset"):
        splits.seen_unseen(["house", "dog"], "pacs_unseen")
    f = tmp_path / "s.txt"
    f.write_text("a\n# comment\nb  # trailing\na\n")
    with pytest.raises(ValueError, match="s.txt:4: class 'a' listed twice"):
        splits.read_class_list(f)
    with pytest.raises(ValueError, match="not found"):
        splits.read_class_list("no_such_split")


def test_split_instances_disjoint_and_seeded():
    inst = [f"i{k}" for k in range(10)] * 2
    tr, te = splits.split_instances(inst, 0.3, seed=1)
    assert len(te) == 3 and len(tr) == 7 and not tr & te
    assert splits.split_instances(inst, 0.3, seed=1) == (tr, te)


def test_leakage_check(tmp_path):
    _write(tmp_path / "tr", [1, 2, 3])
    _write(tmp_path / "te", [4, 5])
    splits.check_no_leakage(tmp_path / "tr", tmp_path / "te")
    _write(tmp_path / "te2", [5, 2])
    with pytest.raises(ValueError, match=r"1 images are in both .*'2.png', '2.png'"):
        splits.check_no_leakage(tmp_path / "tr", tmp_path / "te2")


@pytest.mark.parametrize(
    "name, count, first, last",
    [
        ("sketchy_25_unseen", 25, "cup", "bell"),
        ("tuberlin_30_unseen", 30, "banana", "horse"),
        ("quickdraw_unseen_doodle2search", 30, "bat", "fan"),
    ],
)
def test_published_zero_shot_lists(name, count, first, last):
    names = splits.read_class_list(name)
    assert len(names) == count == len(set(names))
    assert names[0] == first and names[-1] == last


def test_published_lists_keep_upstream_spelling():
    assert "teddy_bear" in splits.read_class_list("sketchy_25_unseen")
    tu = splits.read_class_list("tuberlin_30_unseen")
    assert {"bottle opener", "hot air balloon", "frying-pan", "t-shirt"} <= set(tu)
    assert "palm_tree" in splits.read_class_list("quickdraw_unseen_doodle2search")
