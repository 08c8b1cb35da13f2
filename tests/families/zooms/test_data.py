"""Tests for sketch_tf.families.zooms.data: point sampling and correspondence batches."""

import numpy as np
import tensorflow as tf

from sketch_tf.data import pipeline, schema, tfrecord
from sketch_tf.families.zooms import data as zooms_data
from tests.test_pipeline import SEED, _enc, _in_data


def test_sample_points_pad_and_subsample():
    pa = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    ids = tf.constant([7, 9], tf.int64)
    a, b, i, m = zooms_data.sample_points(pa, pa + 1, ids, 4, SEED)
    assert m.numpy().tolist() == [True, True, False, False]
    assert sorted(i.numpy()[:2].tolist()) == [7, 9] and i.numpy()[2:].tolist() == [-1, -1]
    np.testing.assert_allclose(b.numpy()[:2] - a.numpy()[:2], 1.0)
    a, _, i, m = _in_data(lambda x, y, z: zooms_data.sample_points(x, y, z, 1, SEED), pa, pa, ids)
    assert m.tolist() == [True] and i.tolist()[0] in (7, 9)


def test_correspondence_batches(tmp_path):
    out = tmp_path / "pairs"
    pts = np.array([[1.0, 2.0], [5.0, 6.0], [9.0, 3.0]], np.float32)
    with tfrecord.ShardedWriter(out, "correspondence_pair") as w:
        for i in range(3):
            rec = schema.encode_correspondence_pair(
                _enc(np.full((10, 20), 255)),
                _enc(np.full((20, 20), 0)),
                pts[: i + 1],
                pts[: i + 1] * 2,
                np.arange(i + 1),
                "chair",
                0,
            )
            w.write(rec, class_id=0, class_name="chair", domain="sketch")
    ds = zooms_data.correspondence_batches(
        out, batch_size=3, num_points=2, image_size=40, training=False
    )
    b = next(iter(ds))
    assert b["image_a"].shape == (3, 40, 40, 3)
    assert b["mask"].numpy().tolist() == [[True, False], [True, True], [True, True]]
    # image_a 10x20 -> 20x40 at offset y=10 (scale 2); image_b 20x20 -> scale 2, no offset
    np.testing.assert_allclose(b["points_a"].numpy()[0, 0], [2.0, 14.0])
    np.testing.assert_allclose(b["points_b"].numpy()[0, 0], [4.0, 8.0])
    assert b["point_ids"].numpy()[0].tolist() == [0, -1]
    # An image that already fits (20x20 -> 40 is a resize; a 40x40 one is kept as it is).
    kept = pipeline.resize_pad_geometry(np.full((40, 30, 3), 0.5, np.float32), 40)
    assert kept[0].shape == (40, 40, 3) and kept[1].numpy().tolist() == [1.0, 1.0]
    # category_ids drops other categories before decoding: none of these records is a 1.
    none = zooms_data.correspondence_batches(
        out, batch_size=3, num_points=2, image_size=40, training=False, category_ids=[1]
    )
    assert list(none) == []
    kept = zooms_data.correspondence_batches(
        out, batch_size=3, num_points=2, image_size=40, training=False, category_ids=[0]
    )
    assert sum(int(b["category_id"].shape[0]) for b in kept) == 3
